"""Builders of the embedded data: easy-VQA in the public layouts the data modules read, the offline instruction set.

easy_vqa.py holds the ScienceQA and VQA layouts, the build machinery the other layouts share
(build once, manifest, atomic move into place) and ``lavin-lightning prepare easy-vqa
--layout ...``; captions.py (COCO / Flickr30k Karpathy, TextCaps), textvqa_aokvqa.py,
multiple_choice.py (MMLU, TruthfulQA) and llava_instruct.py hold the others.
instructions.py is ``lavin-lightning prepare instructions``.
"""
