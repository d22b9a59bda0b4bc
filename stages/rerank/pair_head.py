"""A cross-encoder head that starts where a bi-encoder is: the cosine of the two segments' mean states.

A BERT cross-encoder reads "[CLS] query [SEP] passage [SEP]" with full cross-attention; the usual
head scores the [CLS] state. Fine-tuned from a *bi-encoder* such as all-MiniLM-L6-v2 (trained with
mean pooling, so its [CLS] state barely varies between inputs), that head starts from nothing and
learns too slowly for a few hundred training queries: here it stayed at the constant-prediction loss.

`PairBertForSequenceClassification` keeps the same encoder and input, and scores

    logit = scale * cos(mean of the query tokens' states, mean of the passage tokens' states) + bias

with the segments told apart by `token_type_ids` (padding excluded by `attention_mask`). Before any
training it already ranks like a (weaker, cross-attending) bi-encoder, and fine-tuning improves it from
there. It is a regular `*ForSequenceClassification` model with one output: importing this module
registers it with transformers' Auto classes, so `CrossEncoder(path)`, `CrossEncoderReranker` and the
ONNX export load it like any other cross-encoder (`stagegraph.stages.rerank.model` imports it).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig, BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

MODEL_TYPE = "stagegraph_pair_bert"


class PairBertConfig(BertConfig):
    model_type = MODEL_TYPE

    def __init__(self, pair_scale: float = 20.0, **kwargs):
        super().__init__(**kwargs)
        self.pair_scale = pair_scale


class PairBertForSequenceClassification(BertPreTrainedModel):
    config_class = PairBertConfig
    base_model_prefix = "bert"

    def __init__(self, config: PairBertConfig):
        super().__init__(config)
        self.num_labels = 1
        self.bert = BertModel(config, add_pooling_layer=False)
        self.scale = nn.Parameter(torch.tensor(float(config.pair_scale)))
        self.bias = nn.Parameter(torch.zeros(()))
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is self:  # scale and bias are set in __init__; leave them alone
            return
        super()._init_weights(module)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            raise ValueError("PairBertForSequenceClassification needs token_type_ids to tell query from passage")
        states = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
        mask = attention_mask.to(states.dtype)
        second = token_type_ids.to(states.dtype) * mask
        first = mask - second
        q = (states * first.unsqueeze(-1)).sum(1) / first.sum(1, keepdim=True).clamp(min=1.0)
        d = (states * second.unsqueeze(-1)).sum(1) / second.sum(1, keepdim=True).clamp(min=1.0)
        cosine = nn.functional.cosine_similarity(q, d, dim=-1, eps=1e-6)
        logits = (self.scale * cosine + self.bias).unsqueeze(-1)
        loss = None
        if labels is not None:
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        return SequenceClassifierOutput(loss=loss, logits=logits)


def from_bert(model_or_path: str, layers: int | None = None, scale: float = 20.0) -> PairBertForSequenceClassification:
    """A pair model whose encoder is the BERT at `model_or_path` (first `layers` layers)."""
    source = AutoConfig.from_pretrained(model_or_path)
    if source.model_type != "bert":
        raise ValueError(f"the cosine pair head needs a BERT encoder; {model_or_path} is {source.model_type!r}")
    config = PairBertConfig(pair_scale=scale, **{k: v for k, v in source.to_dict().items() if k not in {"model_type", "architectures"}})
    if layers is not None:
        config.num_hidden_layers = min(layers, source.num_hidden_layers)
    config.num_labels = 1
    model = PairBertForSequenceClassification(config)
    encoder = BertModel.from_pretrained(model_or_path, add_pooling_layer=False)
    state = {k: v for k, v in encoder.state_dict().items()}
    missing, unexpected = model.bert.load_state_dict(state, strict=False)
    extra_layers = [k for k in unexpected if not k.startswith("encoder.layer.")]
    if missing or extra_layers:
        raise ValueError(f"could not copy the encoder of {model_or_path}: missing {missing}, unexpected {extra_layers}")
    return model


AutoConfig.register(MODEL_TYPE, PairBertConfig, exist_ok=True)
AutoModelForSequenceClassification.register(PairBertConfig, PairBertForSequenceClassification, exist_ok=True)
