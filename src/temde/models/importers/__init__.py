"""Importers of other code bases' checkpoints; each returns the parts of a temde checkpoint."""
from temde.models.importers.sgraf import convert_state, import_sgraf, read_sgraf_checkpoint, sgraf_config

__all__ = ["convert_state", "import_sgraf", "read_sgraf_checkpoint", "sgraf_config"]
