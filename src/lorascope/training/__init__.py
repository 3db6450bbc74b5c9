"""LoRA reranker training: the ``train_lora`` stage (:mod:`.stage`), its settings
(:mod:`.settings`), the loop (:mod:`.loop`), the resumable state (:mod:`.state`), the training
groups and their order (:mod:`.groups`) and variant initialisations (:mod:`.init`)."""
