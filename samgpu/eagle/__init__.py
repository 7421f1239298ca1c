"""EAGLE-2 drafting's training side: a head for a target model, trained on the target's own hidden
states over its own responses (issue 17; docs/EAGLE.md).

  samgpu.eagle.data      sequences (chat prompt + response + EOS), held-out split, batches
  samgpu.eagle.features  the frozen target's last hidden states, kept on the device
  samgpu.eagle.objective SmoothL1 + 0.1 x soft cross-entropy, top-1 / top-5 against the target
  samgpu.eagle.loop      AdamW, warm-up + cosine, clock and epoch budgets
  samgpu.eagle.train     the command (`python -m samgpu.eagle.train`, `samgpu eagle train`)
The head module and its file live in samgpu/drafters/parts/eagle_model.py.
"""
