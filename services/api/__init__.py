"""The QA API: answers with citations from the champion model, hot-swapped when the alias moves."""
