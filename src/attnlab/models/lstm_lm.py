"""An LSTM language model with tied input and output embeddings (Merity et al., 2017; Press & Wolf, 2017).

The recurrent baseline for the transformer LMs: it reads any length (no position table, so it takes no `max_len`;
the data's `max_len` shapes only the training windows) and generates at one LSTM step per new token, carrying its state.
"""

import torch
from torch import nn

from attnlab.models.sampling import Streamer, decode

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (n_layers, B, d_hidden)


class LSTMLM(nn.Module):
    """Embedding -> dropout -> stacked LSTM -> dropout -> (projection to d_embed) -> output tied to the embedding."""

    def __init__(
        self,
        *,
        vocab_size: int,
        d_embed: int = 256,
        d_hidden: int = 512,
        n_layers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = True,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.drop = nn.Dropout(dropout)
        between = dropout if n_layers > 1 else 0.0  # nn.LSTM's dropout acts between layers only
        self.lstm = nn.LSTM(d_embed, d_hidden, num_layers=n_layers, batch_first=True, dropout=between)
        # Tying needs the output layer's input width to be d_embed: project the hidden state down (or up) to it.
        d_out = d_embed if tie_weights else d_hidden
        self.proj = nn.Linear(d_hidden, d_embed) if tie_weights and d_hidden != d_embed else nn.Identity()
        self.head = nn.Linear(d_out, vocab_size)
        # Small uniform embeddings (as in the classic word-level LM recipes): N(0, 1) rows, tied to the output
        # layer, would start the model with logits of size ~sqrt(d_embed) and a loss far above log(V).
        nn.init.uniform_(self.embed.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if tie_weights:
            self.head.weight = self.embed.weight  # one (V, d_embed) matrix reads and writes tokens
        else:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)

    def output_layer(self) -> nn.Module:
        """The module that produces the logits (its weight is the embedding when tied)."""
        return self.head

    def _run(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits (B, T, V) for token ids x (B, T) continuing from `state` (None: zeros), and the state after x."""
        h = self.drop(self.embed(x))  # (B, T, E)
        h, state = self.lstm(h, state)  # (B, T, H)
        return self.head(self.proj(self.drop(h))), state  # (B, T, V)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map token ids (B, T) to next-token logits (B, T, V)."""
        return self._run(x)[0]

    @torch.no_grad()
    def generate(
        self,
        idx: torch.Tensor,
        max_new_tokens: int,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        eos_id: int | None = None,
        generator: torch.Generator | None = None,
        streamer: Streamer | None = None,
    ) -> torch.Tensor:
        """Extend idx (B, T) by up to max_new_tokens sampled tokens -> (B, T + n); see attnlab.models.sampling."""
        state: list[State] = []  # the LSTM state after the tokens read so far

        def step(tokens: torch.Tensor) -> torch.Tensor:
            new = tokens if not state else tokens[:, -1:]  # the prompt once, then one token a step
            logits, after = self._run(new, state.pop() if state else None)
            state.append(after)
            return logits[:, -1]  # (B, V)

        return decode(self, step, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                      eos_id=eos_id, generator=generator, streamer=streamer)
