"""lavin-lightning: parameter-efficient vision-language instruction tuning as Lightning experiments."""

import logging


class _DropTorchaoEnumNotice(logging.Filter):
    """transformers imports torchao (the quantized-backbone backend) whenever it is installed, and
    torchao's import makes torch log a deprecation notice per enum it registers, on every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "register_constant" not in record.getMessage()


logging.getLogger("torch.utils._pytree").addFilter(_DropTorchaoEnumNotice())
