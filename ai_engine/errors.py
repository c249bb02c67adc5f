"""Errors of ai_engine. The CLI prints their message and exits non-zero."""


class AIEngineError(Exception):
    """Base of every user-facing ai_engine error (bad input, missing file, wrong modality)."""


class InputError(AIEngineError):
    """An input file, folder or datalist is missing, malformed or of the wrong kind."""


class ModelFolderError(AIEngineError):
    """A model folder is missing parts or was written by an incompatible version."""
