"""Host models: SGRAF's SAF and SGR, and the VSE dual encoder, each with a swappable global pooling; their presets."""
from temde.models.config import ConfigError, ModelConfig
from temde.models.encoders import Encoded, ImageEncoder, TextEncoder, l2norm
from temde.models.heads import SAFHead, SGRHead
from temde.models.registry import create_model, list_models, load_preset, preset_config
from temde.models.retrieval import RetrievalModel
from temde.models.vse import VSEImageEncoder, cosine_scores

__all__ = [
    "ModelConfig", "ConfigError", "Encoded", "ImageEncoder", "TextEncoder", "SAFHead", "SGRHead", "RetrievalModel",
    "create_model", "list_models", "load_preset", "preset_config", "l2norm", "VSEImageEncoder", "cosine_scores",
]
