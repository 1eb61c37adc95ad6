// Written by `python -m gpt2_onnx.apps.web_contract`: do not edit (tests/test_web.py checks it).
export const CONTRACT = {
  "format_version": 2,
  "files": {
    "manifest": "gpt2_onnx.json",
    "tokenizer": "tokenizer.json"
  },
  "architecture": [
    "n_layer",
    "n_head",
    "n_embd",
    "vocab_size",
    "n_positions"
  ],
  "decode": {
    "wordpiece_cjk": "wordpiece_cjk",
    "tokenizer": "tokenizer"
  },
  "cjk_ranges": [
    [
      19968,
      40959
    ],
    [
      13312,
      19903
    ],
    [
      131072,
      173791
    ],
    [
      173824,
      177983
    ],
    [
      177984,
      178207
    ],
    [
      178208,
      183983
    ],
    [
      63744,
      64255
    ],
    [
      194560,
      195103
    ]
  ],
  "io": {
    "convention": "kv_buffer",
    "input_ids": "input_ids",
    "position_ids": "position_ids",
    "seqlens_k": "seqlens_k",
    "total_sequence_length": "total_sequence_length",
    "logits_to_keep": "logits_to_keep",
    "logits": "logits",
    "past": "past_key_values.{layer}.{kind}",
    "present": "present.{layer}.{kind}",
    "kv_kinds": [
      "key",
      "value"
    ]
  },
  "precisions": [
    {
      "name": "fp32",
      "graph_file": "model.fp32.onnx",
      "data_file": "model.fp32.onnx.data",
      "min_call_rows": 1,
      "webgpu": true
    },
    {
      "name": "int8",
      "graph_file": "model.int8.onnx",
      "data_file": "model.int8.onnx.data",
      "min_call_rows": 1,
      "webgpu": false
    },
    {
      "name": "int4",
      "graph_file": "model.int4.onnx",
      "data_file": "model.int4.onnx.data",
      "min_call_rows": 2,
      "webgpu": true
    }
  ],
  "default_precision": "int8",
  "devices": [
    "wasm",
    "webgpu"
  ],
  "ecosystem_graph": "model.onnx",
  "options": [
    {
      "name": "max_new_tokens",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 0",
      "default": 50
    },
    {
      "name": "min_new_tokens",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 0",
      "default": 0
    },
    {
      "name": "do_sample",
      "kind": "bool",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "True or False",
      "default": false
    },
    {
      "name": "temperature",
      "kind": "float",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "≥ 0",
      "default": 1.0
    },
    {
      "name": "top_k",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 0",
      "default": 50
    },
    {
      "name": "top_p",
      "kind": "float",
      "low": 0,
      "high": 1,
      "open_low": true,
      "choices": [],
      "nullable": false,
      "allowed": "in (0, 1]",
      "default": 1.0
    },
    {
      "name": "min_p",
      "kind": "float",
      "low": 0,
      "high": 1,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "in [0, 1]",
      "default": 0.0
    },
    {
      "name": "repetition_penalty",
      "kind": "float",
      "low": 0,
      "high": null,
      "open_low": true,
      "choices": [],
      "nullable": false,
      "allowed": "> 0",
      "default": 1.0
    },
    {
      "name": "no_repeat_ngram_size",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 0",
      "default": 0
    },
    {
      "name": "presence_penalty",
      "kind": "float",
      "low": -2,
      "high": 2,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "in [-2, 2]",
      "default": 0.0
    },
    {
      "name": "frequency_penalty",
      "kind": "float",
      "low": -2,
      "high": 2,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "in [-2, 2]",
      "default": 0.0
    },
    {
      "name": "num_return_sequences",
      "kind": "int",
      "low": 1,
      "high": 64,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int in [1, 64]",
      "default": 1
    },
    {
      "name": "num_beams",
      "kind": "int",
      "low": 1,
      "high": 64,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int in [1, 64]",
      "default": 1
    },
    {
      "name": "length_penalty",
      "kind": "float",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "a number",
      "default": 1.0
    },
    {
      "name": "early_stopping",
      "kind": "choice",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [
        true,
        false,
        "never"
      ],
      "nullable": false,
      "allowed": "True, False or 'never'",
      "default": false
    },
    {
      "name": "stop",
      "kind": "texts",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "a list of strings",
      "default": []
    },
    {
      "name": "stop_token_ids",
      "kind": "ids",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": true,
      "allowed": "a list of token ids",
      "default": null
    },
    {
      "name": "bad_words",
      "kind": "words",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "a list of strings or token-id lists",
      "default": []
    },
    {
      "name": "logit_bias",
      "kind": "id map",
      "low": -100,
      "high": 100,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "a map token id → number in [-100, 100]",
      "default": []
    },
    {
      "name": "constraint",
      "kind": "constraint",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": true,
      "allowed": "None or a map of one form to its value: `json_schema`, `json_object`, `regex`, `choice`, `grammar`",
      "default": null
    },
    {
      "name": "seed",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": true,
      "allowed": "an int ≥ 0 or None",
      "default": null
    },
    {
      "name": "logprobs",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 0",
      "default": 0
    },
    {
      "name": "truncate",
      "kind": "choice",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [
        null,
        "left"
      ],
      "nullable": false,
      "allowed": "None or 'left'",
      "default": null
    },
    {
      "name": "context_overflow",
      "kind": "choice",
      "low": null,
      "high": null,
      "open_low": false,
      "choices": [
        "error",
        "slide"
      ],
      "nullable": false,
      "allowed": "'error' or 'slide'",
      "default": "error"
    },
    {
      "name": "context_keep",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 0",
      "default": 0
    },
    {
      "name": "prompt_lookup_num_tokens",
      "kind": "int",
      "low": 0,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 0",
      "default": 0
    },
    {
      "name": "max_matching_ngram_size",
      "kind": "int",
      "low": 1,
      "high": null,
      "open_low": false,
      "choices": [],
      "nullable": false,
      "allowed": "an int ≥ 1",
      "default": 2
    }
  ],
  "top_p_candidates": 256,
  "finish": {
    "stop": "stop",
    "stop_string": "stop_string",
    "length": "length"
  }
};
