"""The session: settings (CLI > env > ini > marker), models and checkpoints per case, running the gates."""
