"""Convert a GGUF file's tokenizer into a Hugging Face tokenizer folder, offline and without torch.

Run by :func:`mrsa.servers.bundled_triton.ensure_tokenizer` with the bundled Triton environment's
interpreter (it has ``gguf`` and ``transformers``)::

    python -I gguf_tokenizer.py MODEL.gguf OUT_DIR

``AutoTokenizer.from_pretrained(..., gguf_file=...)`` would do the same but insists on torch
(it reads the whole checkpoint), so this reads only the metadata with ``gguf``'s reader, hands the
``tokenizer.ggml.*`` fields to transformers' own GGUF tokenizer converter, and saves the result
(``tokenizer.json`` and ``tokenizer_config.json``, with the GGUF's chat template). Nothing is
downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any


def read_metadata(gguf: Path) -> tuple[str, dict[str, Any], str | None]:
    """(architecture, tokenizer fields as transformers names them, chat template)."""
    from gguf import GGUFReader
    from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING
    from transformers.modeling_gguf_pytorch_utils import _gguf_parse_value

    reader = GGUFReader(str(gguf))
    names = GGUF_TOKENIZER_MAPPING["tokenizer"]
    fields: dict[str, Any] = {}
    template: str | None = None
    architecture = ""
    for key, field in reader.fields.items():
        values = [_gguf_parse_value(field.parts[i], field.types) for i in field.data]
        value = values[0] if len(values) == 1 else values
        if key == "general.architecture":
            architecture = str(value)
        elif key == "tokenizer.chat_template":
            template = str(value)
        elif key.startswith("tokenizer.") and key.removeprefix("tokenizer.") in names:
            fields[names[key.removeprefix("tokenizer.")]] = value
    return architecture, fields, template


def convert(gguf: Path, out: Path) -> None:
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.ggml import convert_gguf_tokenizer

    architecture, fields, template = read_metadata(gguf)
    if template is None:
        raise SystemExit(f"{gguf}: the GGUF carries no chat template")
    backend, extra = convert_gguf_tokenizer(architecture, fields)
    tokens = fields["tokens"]
    special = {
        name: tokens[fields[f"{name}_id"]]
        for name in ("bos_token", "eos_token", "unk_token", "pad_token")
        if isinstance(fields.get(f"{name}_id"), int) and 0 <= fields[f"{name}_id"] < len(tokens)
    }
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, chat_template=template, **{**extra, **special}
    )
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: gguf_tokenizer.py MODEL.gguf OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
