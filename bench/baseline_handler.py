"""The padded baseline: an embedding handler written the way the common TorchServe
transformers example is, to measure what most users run today.

Each request is tokenized on its own and padded to max_length 150, the model runs once
per request (batchSize 1, no dynamic batching), and the answer is that request's
mean-pooled, normalised vector. It is a benchmark fixture, not something transerve serves.
"""

import json
import logging

import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer
from ts.torch_handler.base_handler import BaseHandler

logger = logging.getLogger(__name__)
MAX_LENGTH = 150


class PaddedEmbeddingHandler(BaseHandler):
    def initialize(self, context):
        model_dir = context.system_properties["model_dir"]
        self.device = torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModel.from_pretrained(model_dir).to(self.device).eval()
        self.initialized = True

    def preprocess(self, data):
        encoded = []
        for row in data:
            body = row.get("data") or row.get("body")
            if isinstance(body, (bytes, bytearray)):
                body = json.loads(body.decode("utf-8"))
            text = body["inputs"] if isinstance(body, dict) else body
            if isinstance(text, list):
                text = text[0]
            encoded.append(self.tokenizer(text, max_length=MAX_LENGTH, padding="max_length", truncation=True,
                                          return_tensors="pt"))
        return encoded

    def inference(self, encoded):
        outputs = []
        with torch.no_grad():
            for inputs in encoded:
                hidden = self.model(**inputs).last_hidden_state
                mask = inputs["attention_mask"].unsqueeze(-1).float()
                pooled = (hidden * mask).sum(1) / mask.sum(1)
                outputs.append(F.normalize(pooled, dim=-1)[0])
        return outputs

    def postprocess(self, outputs):
        return [json.dumps({"embeddings": [vector.tolist()]}) for vector in outputs]
