"""`lavin-lightning`: dispatch to Lightning's fit/validate/test/predict or to one of the suite's commands.

Nothing is done here but choosing the command; each lives in `lavin_lightning.commands` and is
imported only when it runs, so `lavin-lightning --help` is instant. Our own errors (a config, a
data file or a checkpoint that is wrong; a diverged run) end the command with their message
alone, exit status 1; `--debug` anywhere on the command line shows their traceback instead.
"""

from __future__ import annotations

import importlib
import sys

from lavin_lightning.errors import CheckpointError, ConfigError, DataError

# Lightning's subcommands, run by LightningCLI with our configs.
LIGHTNING = {
    "fit": "train a method (adapters only) and export its adapter",
    "validate": "validation loss of a configured model",
    "test": "generate on the test split and score it with the official metric",
    "predict": "generate for every input and write predictions.jsonl",
}
# The suite's own commands: name -> (module under lavin_lightning.commands, one line).
COMMANDS = {
    "params": ("params", "trainable and total parameters of a config, built on the meta device"),
    "score": ("score", "score a predictions file with the official evaluator (ScienceQA, VQA, captions)"),
    "prepare": ("prepare", "build the embedded data sets (easy-VQA layouts, the instruction set)"),
    "reproduce": ("reproduce", "run every row of a paper table (fit + test), then paper | measured | delta"),
    "table": ("tables", "a paper table: published values next to the measured ones"),
    "evaluate": ("evaluate", "multiple-choice log-likelihood evaluation (MMLU, TruthfulQA), base vs adapted"),
    "chat": ("chat", "talk to a trained model, streamed (text, or text and an image)"),
    "import": ("import_release", "turn the authors' released LaVIN / LLaMA-Adapter weights into an adapter export"),
    "demo": ("demo", "the main jobs on the embedded default: LaVIN, instruction tuning, PETAL"),
}


def usage() -> str:
    lines = ["usage: lavin-lightning COMMAND [options]   (lavin-lightning COMMAND --help for its options)", ""]
    lines += [f"  {name:<10}{summary}" for name, summary in LIGHTNING.items()]
    lines += [f"  {name:<10}{summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "fit|validate|test|predict read LightningCLI configs: --config A.yaml [--config B.yaml] [--key=v]",
              "--debug (with any command): show the traceback of an error instead of its message alone"]
    return "\n".join(lines)


DEBUG_FLAG = "--debug"


def user_error(err: BaseException) -> BaseException | None:
    """Our own error that `err` is or was raised from (`raise ... from`: jsonargparse wraps what a
    model's `__init__` raises), whose message is the whole story; None for anything else (a bug,
    an interrupt), which keeps its traceback."""
    ours: tuple[type[BaseException], ...] = (ConfigError, DataError, CheckpointError)
    base = sys.modules.get("lavin_lightning.models.base")  # only a run that imported it can diverge
    if base is not None:
        ours += (base.NonFiniteError,)
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ours):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def lightning_main(args: list[str] | None) -> None:
    """LightningCLI over every method and data module; `args` None reads the command line."""
    from lightning.pytorch import LightningDataModule

    from lavin_lightning.config import SuiteCLI
    from lavin_lightning.models.base import PEFTModule

    SuiteCLI(PEFTModule, LightningDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
             save_config_kwargs={"overwrite": True})


def finish_wandb() -> None:
    """Close a W&B run now: wandb's own exit hook would print a colour-coded footer instead."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()


def main(argv: list[str] | None = None) -> None:
    from_command_line = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = DEBUG_FLAG in argv
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        dispatch(argv, from_command_line)
    except Exception as err:
        ours = user_error(err)
        if ours is None or debug:
            raise
        close_progress_bars()
        raise SystemExit(f"error: {ours}") from None


def close_progress_bars() -> None:
    """End the progress bars a run left open (Lightning's, tqdm), so that the message that follows
    starts on a line of its own."""
    tqdm = sys.modules.get("tqdm")
    for bar in list(getattr(getattr(tqdm, "tqdm", None), "_instances", ())):
        bar.close()


def dispatch(argv: list[str], from_command_line: bool) -> None:
    """Run the command `argv` names (`--debug` already taken out)."""
    from lavin_lightning import console

    console.configure()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return
    name = argv[0]
    if name in LIGHTNING:
        from lavin_lightning.config import expand_config_args

        argv = expand_config_args(argv)  # a table row's `# extends:` files come with it
        # From the shell LightningCLI reads sys.argv itself (handing it `args` too makes it warn).
        if from_command_line:
            sys.argv[1:] = argv
        lightning_main(None if from_command_line else argv)
        finish_wandb()
        return
    if name not in COMMANDS:
        raise SystemExit(f"lavin-lightning: unknown command {name!r}\n\n{usage()}")
    command = importlib.import_module(f"lavin_lightning.commands.{COMMANDS[name][0]}")
    command.main(argv[1:])
    finish_wandb()


if __name__ == "__main__":
    main()
