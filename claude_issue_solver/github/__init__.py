"""The GitHub side: the client, what is watched (labels, triggers, webhooks), whose words are trusted,
and what is published."""
