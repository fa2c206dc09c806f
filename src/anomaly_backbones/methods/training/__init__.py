"""Methods that train the backbone on the prepared images (`reads = "images"`, image-level).

  base.py        ImageMethod (the shared loop: seeding, batches, progress, memory guard, logging)
                 and ImageSet (a split's prepared images)
  trunk.py       the trained network (trunk to the deepest layer + pooling, frozen prefix, eval
                 mode) and the frozen prefix's cache
  knn.py         exact k-NN scores (DN2)
  deep_svdd.py   Deep SVDD (Ruff et al. 2018)
  panda.py       PANDA (Reiss et al. 2021), variants early / ses / ewc; ewc.py: the penalty, Fisher
  msc.py         Mean-Shifted Contrastive (Reiss & Hoshen 2023)
  doc.py         DOC, joint optimization (Perera & Patel 2019)

The stage is stages/04_train.py (train@<method>, one per entry of `train_methods`).
"""
