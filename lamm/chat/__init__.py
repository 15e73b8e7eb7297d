"""Multi-turn chat with a MultimodalLM: conversation history and media (`session`), streaming replies
(`streaming`), and loading a run with the prompt layout it was trained with (`loading`).
The `lamm-chat` command is `lamm.cli.chat`."""
