"""Data set sources for `temde prepare`: each turns raw images + text into the precomp layout.

folder       any folder of images + a TSV of captions (`prepare_folder`); `build_dataset` is the shared path
openclipart  the Debian openclipart packages, captioned from their SVG metadata (`prepare_openclipart`)
splits       leakage-free grouped train/dev/test splits (`grouped_split`)

The multi-caption sources (1..n captions per image, `{split}_cap2img.npy`; `combined.prepare_sources`):
emoji        one emoji drawn by several vendors (npm Iconify sets), CLDR + emojilib texts
icons        six npm icon sets, name + tags
openclipart_captions  openclipart with title / description / specific keywords as separate captions
combined     one source per folder, or all of them with a test split per source (`temde prepare all`)
multicaption the shared path: concept-grouped split, one held-out image per group, the files
npm, render  pinned npm tarballs (SHA-256) and SVG rendering with cairosvg
"""
from temde.data.sources.folder import MANIFEST_FILE, build_dataset, prepare_folder, read_caption_table
from temde.data.sources.openclipart import parse_svg_metadata, prepare_openclipart
from temde.data.sources.splits import grouped_split, leakage_groups, normalise_text

__all__ = ["MANIFEST_FILE", "build_dataset", "prepare_folder", "read_caption_table", "parse_svg_metadata",
           "prepare_openclipart", "grouped_split", "leakage_groups", "normalise_text"]
