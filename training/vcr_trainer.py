"""transformers' ``Trainer`` with the VCR loss of :mod:`training.vcr_finetune`."""

from __future__ import annotations

from transformers import Trainer


class VCRTrainer(Trainer):
    """``Trainer`` whose loss is the VCR head's: softmax cross-entropy over each item's choice scores."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        model_inputs = {key: value for key, value in inputs.items() if key not in ("labels", "index")}
        outputs = model(**model_inputs, vcr_labels=inputs["labels"], return_loss=True)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def floating_point_ops(self, inputs) -> int:
        """The Trainer's estimate (6 x tokens x parameters), over the text of every choice."""
        tokens = sum(ids.numel() for ids in inputs["input_ids"])
        return 6 * tokens * self.model.num_parameters(exclude_embeddings=True)
