"""The batch contract between the data modules (which make batches) and the models (which read them).

Every data module's collator returns a dict with:

    input_ids        (B, T) long   BOS + prompt (+ answer + EOS when training), right-padded
    attention_mask   (B, T) long   1 on real tokens, 0 on padding
    labels           (B, T) long   train/val only: the token id where the loss is taken (the
                                   answers and the EOS after each), IGNORE_INDEX elsewhere; not
                                   shifted: labels[b, t] is predicted from the positions before t
    pixel_values     (B, 3, H, W)  a zero image for samples without one
    has_image        (B,) bool
    pids             list[str]     the sample ids the scorers and writers key on
    instruction_input_ids, instruction_attention_mask
                                   only when the model has an instruction encoder (InstructBLIP's
                                   Q-Former): the instruction tokenised by its own tokenizer

It lives below both layers so that neither imports the other for it.
"""

IGNORE_INDEX = -100  # labels that take no loss (cross-entropy's default ignore_index)
