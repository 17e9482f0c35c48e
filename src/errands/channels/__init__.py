"""Channels: how errands reaches a person outside the inbox (the webhook notifier today;
email next). A channel listens to the store's commits and never blocks an errand."""
