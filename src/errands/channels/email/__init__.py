"""Talking to errands by mail: :class:`~errands.channels.email.reader.MailReader` reads
the inbox of ``[email]`` and turns mail from allowed, authenticated senders into
errands (a reply continues the errand it answers); mail from anyone else starts nothing.
Started by :meth:`errands.harness.Harness.channels` in a serving process."""
