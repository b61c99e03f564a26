"""Builders of the embedded data: easy-VQA in the ScienceQA and VQA layouts, the offline instruction set.

Each module has ``main(argv)``, run by ``lavin-lightning prepare easy-vqa|instructions``.
"""
