"""`lavin-lightning chat`: an interactive multi-turn session with a trained model, streamed.

    lavin-lightning chat --config A.yaml [--adapter DIR] [--image PATH] [--template alpaca]

Each turn is encoded exactly as the instruction data modules encode training
conversations (history turns end in EOS), so the model sees what it was trained on.
Lines starting with "/" are commands: /image PATH, /reset, /exit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import torch
from PIL import Image, UnidentifiedImageError

from data_modules.base import IMAGENET_MEAN, IMAGENET_STD, image_transform
from data_modules.batching import collate_sequences, pad_token_id
from data_modules.templates import TEMPLATES, encode_conversation
from lavin_lightning.config import load_causal_lm_module, load_configs
from lavin_lightning.errors import ConfigError, DataError
from lavin_lightning.models.causal_lm import CausalLMModule, GenerationConfig

HELP = "commands: /image PATH (attach an image), /reset (forget the conversation), /exit"


class ChatSession:
    """A conversation with one model: history, an optional image, streamed replies."""

    def __init__(self, module: CausalLMModule, template: str, generation: GenerationConfig,
                 max_seq_len: int = 512, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD):
        self.module = module
        self.template = template
        self.generation = generation
        self.max_seq_len = max_seq_len
        vision = getattr(module.model, "vision", None)
        self.transform = image_transform(vision.image_size, image_mean, image_std) if vision is not None else None
        self.history: list[tuple[str, str]] = []
        self.pixels: torch.Tensor | None = None

    def set_image(self, path: str | Path) -> None:
        if self.transform is None:
            raise ConfigError("this model has no vision encoder, so it cannot take an image")
        path = Path(path)
        try:
            with Image.open(path) as image:
                self.pixels = self.transform(image)
        except (FileNotFoundError, UnidentifiedImageError, OSError) as err:
            raise DataError(f"cannot read the image {path}: {err}") from None
        self.history = []  # a new image starts a new conversation

    def reset(self) -> None:
        self.history = []

    def batch(self, user: str) -> dict:
        tokenizer = self.module.tokenizer
        ids, _, _ = encode_conversation(tokenizer, self.template, [*self.history, (user, None)],
                                        max_seq_len=self.max_seq_len)
        has_image = self.pixels is not None
        batch = collate_sequences([ids], None, pad_token_id(tokenizer))
        batch.update(pixel_values=self.pixels[None] if has_image else torch.zeros(1, 3, 1, 1),
                     has_image=torch.tensor([has_image]))
        device = self.module.device
        return {**{key: value.to(device) for key, value in batch.items()}, "pids": ["chat"]}

    def respond(self, user: str, on_text: Callable[[str], None] | None = None) -> str:
        """Generate the reply to `user`, calling `on_text` with each new piece of text."""
        tokenizer = self.module.tokenizer
        produced: list[int] = []
        shown = ""

        def stream(token: torch.Tensor) -> None:
            nonlocal shown
            if int(token[0]) == tokenizer.eos_token_id:
                return
            produced.append(int(token[0]))
            # Decode the whole reply each time: a character may span several tokens.
            text = tokenizer.decode(produced, skip_special_tokens=True)
            if on_text is not None and len(text) > len(shown) and not text.endswith("\ufffd"):
                on_text(text[len(shown):])
                shown = text

        reply = self.module.generate_text(self.batch(user), self.generation, on_token=stream)[0]
        if on_text is not None and len(reply) > len(shown):
            on_text(reply[len(shown):])
        self.history.append((user, reply.strip()))
        return reply


def run(session: ChatSession, stdin: TextIO, stdout: TextIO) -> None:
    prompt = "you> "
    stdout.write(HELP + "\n")
    while True:
        stdout.write(prompt)
        stdout.flush()
        line = stdin.readline()
        if not line:
            stdout.write("\n")
            return
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return
        if text == "/reset":
            session.reset()
            stdout.write("(conversation cleared)\n")
            continue
        if text.startswith("/image"):
            try:
                session.set_image(text[len("/image"):].strip())
                stdout.write("(image attached; new conversation)\n")
            except (ConfigError, DataError) as err:
                stdout.write(f"error: {err}\n")
            continue
        stdout.write("model> ")
        session.respond(text, on_text=lambda piece: (stdout.write(piece), stdout.flush()))
        stdout.write("\n")


def main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="lavin-lightning chat", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", required=True, help="YAML config of the model (repeatable)")
    ap.add_argument("--adapter", help="directory with adapter.safetensors + adapter_config.json")
    ap.add_argument("--image", help="an image to talk about (needs a model with a vision encoder)")
    ap.add_argument("--template", choices=TEMPLATES, help="prompt template (default: the config's data template)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--temperature", type=float, default=0.1, help="0 = greedy (default: the papers' 0.1)")
    ap.add_argument("--top-p", type=float, default=0.75)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    config = load_configs(args.config)
    data_args = (config.get("data") or {}).get("init_args") or {}
    module = load_causal_lm_module(config, args.adapter, "chat").eval()
    generation = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed)
    session = ChatSession(module, args.template or data_args.get("template", "alpaca"), generation,
                          max_seq_len=data_args.get("max_seq_len", 512),
                          image_mean=data_args.get("image_mean", IMAGENET_MEAN),
                          image_std=data_args.get("image_std", IMAGENET_STD))
    if args.image:
        session.set_image(args.image)
    with module.inference():  # as predict runs the model (LoRA: updates merged)
        run(session, sys.stdin, sys.stdout)
