"""Provider clients: one per wire protocol (OpenAI chat and responses, Anthropic,
Gemini), on a shared base (:mod:`.base`)."""
