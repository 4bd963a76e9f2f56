"""A local SmolVLM directory (config, tokenizer, processor) generated in code, with no hub access.

SmolVLA builds its backbone with `AutoConfig/AutoProcessor.from_pretrained(vlm_model_name)` and its
tokenizer step with `AutoTokenizer.from_pretrained`. Pointing `vlm_model_name` at the directory this
module writes makes every one of those calls local. The weights are not stored here: SmolVLA
initialises them from its own seed (`load_vlm_weights=False`) or loads them from a policy checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# SmolVLM's special tokens; SmolVLA reads `fake_image_token_id` and `global_image_token_id`.
SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "image_token": "<image>",
    "global_image_token": "<global-img>",
    "end_of_utterance_token": "<end_of_utterance>",
}
BASE_TOKENS = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>", *SPECIAL_TOKENS.values()]
# Words of LIBERO's task language (all suites) plus digits and punctuation; anything else maps to <unk>.
LIBERO_WORDS = """
a and at back basket black bottle bottom bowl box butter cabinet caddy can center chocolate close
cookie cookies cream cheese cup drawer dressing flat front in it its ketchup left middle milk moka mug
of on open orange juice pick place plate plates pot pudding push put rack red right salad sauce soup
stove the tomato top turn up white wine wooden yellow alphabet bbq book both compartment frying pan
microwave next to between shelf caddy's cabinet's ramekin basin faucet gray short tall side desk
porcelain plastic tray sink spoon on the handle nearest furthest table high low under over into out
""".split()


@dataclass(frozen=True)
class TinyVLMSpec:
    """Sizes of the generated SmolVLM (SmolVLA's `num_vlm_layers` truncates the text model further)."""

    text_hidden: int = 64
    text_layers: int = 4
    text_heads: int = 4
    text_kv_heads: int = 2
    vision_hidden: int = 32
    vision_layers: int = 2
    vision_heads: int = 2
    image_size: int = 64
    patch_size: int = 8
    scale_factor: int = 2
    text_intermediate: int = 0
    """MLP width; 0 = 2 x text_hidden"""
    vision_intermediate: int = 0
    """MLP width; 0 = 2 x vision_hidden"""
    vocab_size: int = 0
    """embedding rows; 0 = the LIBERO-word tokenizer's size (larger only pads the embedding)"""


# SmolVLA's backbone (SmolVLM2-500M-Video-Instruct) at its real shapes: with random weights it measures
# real-size speed and memory offline (SmolVLA keeps the first `num_vlm_layers` = 16 text layers).
SMOLVLM2_500M = TinyVLMSpec(text_hidden=960, text_layers=32, text_heads=15, text_kv_heads=5, vision_hidden=768,
                            vision_layers=12, vision_heads=12, image_size=512, patch_size=16, scale_factor=4,
                            text_intermediate=2560, vision_intermediate=3072, vocab_size=49280)


def _tokenizer(directory: Path) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(LIBERO_WORDS) | set("0123456789") | set(".,;:!?'\n"))
    vocab = {tok: i for i, tok in enumerate(BASE_TOKENS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                  pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                  bos_token="<|im_start|>", eos_token="<end_of_utterance>",
                                  additional_special_tokens=list(SPECIAL_TOKENS.values()),
                                  extra_special_tokens=SPECIAL_TOKENS, model_max_length=512)
    tok.save_pretrained(directory)


def write_tiny_vlm(directory: str | Path, spec: TinyVLMSpec = TinyVLMSpec()) -> Path:
    """Write a loadable SmolVLM config/tokenizer/processor directory; idempotent and atomic."""
    from transformers import (
        AutoTokenizer,
        SmolVLMConfig,
        SmolVLMImageProcessor,
        SmolVLMProcessor,
        SmolVLMVideoProcessor,
    )

    directory = Path(directory)
    stamp = directory / "grpo_vla_tiny_spec.json"
    if stamp.exists() and json.loads(stamp.read_text()) == asdict(spec):
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
    _tokenizer(tmp)
    tokenizer = AutoTokenizer.from_pretrained(tmp)
    config = SmolVLMConfig(
        text_config={"model_type": "llama", "hidden_size": spec.text_hidden,
                     "intermediate_size": spec.text_intermediate or 2 * spec.text_hidden,
                     "num_hidden_layers": spec.text_layers,
                     "num_attention_heads": spec.text_heads, "num_key_value_heads": spec.text_kv_heads,
                     "head_dim": spec.text_hidden // spec.text_heads,
                     "vocab_size": max(spec.vocab_size, len(tokenizer)),
                     "max_position_embeddings": 2048, "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": spec.vision_hidden,
                       "intermediate_size": spec.vision_intermediate or 2 * spec.vision_hidden,
                       "num_hidden_layers": spec.vision_layers, "num_attention_heads": spec.vision_heads,
                       "image_size": spec.image_size, "patch_size": spec.patch_size},
        scale_factor=spec.scale_factor,
        image_token_id=tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS["image_token"]),
        pad_token_id=tokenizer.pad_token_id,
    )
    config.save_pretrained(tmp)
    image_processor = SmolVLMImageProcessor(size={"longest_edge": spec.image_size},
                                            max_image_size={"longest_edge": spec.image_size},
                                            do_image_splitting=False)
    image_seq_len = (spec.image_size // spec.patch_size) ** 2 // spec.scale_factor**2
    video_processor = SmolVLMVideoProcessor(size={"longest_edge": spec.image_size},
                                            max_image_size={"longest_edge": spec.image_size})
    SmolVLMProcessor(image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor,
                     image_seq_len=image_seq_len).save_pretrained(tmp)
    (tmp / stamp.name).write_text(json.dumps(asdict(spec)))
    if directory.exists():  # a stale or partial directory from an older spec
        shutil.rmtree(directory, ignore_errors=True)
    try:
        os.replace(tmp, directory)
    except OSError:  # another process won the race with an identical directory
        shutil.rmtree(tmp, ignore_errors=True)
    return directory
