// Prompt encoding and text decoding by the model family's conventions (runtime/text.py, line for line).
//
// uer (`wordpiece_cjk`): prompt = [CLS] + WordPiece ids, no [SEP]; decoded text drops special tokens, joins `##`
// continuations and puts a space only between two Latin / digit word pieces, never around CJK characters or
// punctuation. English GPT-2 (`tokenizer`): the tokenizer's own byte-level decoder, holding back ids until they
// form whole characters. Decoding is incremental (TextAssembler); streamed pieces join to the decoded text.

import { Tokenizer } from "@huggingface/tokenizers";
import { CONTRACT } from "./contract.js";

const REPLACEMENT_CHAR = "\ufffd"; // what an incomplete UTF-8 byte sequence decodes to

/** The code point ranges BERT's basic tokenizer splits one character per token (the contract's, runtime/text.py). */
export function isCjk(ch) {
  const cp = ch.codePointAt(0);
  return CONTRACT.cjk_ranges.some(([low, high]) => cp >= low && cp <= high);
}

// Python's str.isalnum: letters and numbers of any script
const isWordChar = (ch) => ch !== undefined && /^[\p{L}\p{N}]$/u.test(ch) && !isCjk(ch);

/** Encodes prompts and decodes ids for one model directory. */
export class TextCodec {
  /** `tokenizerJson`: tokenizer.json, parsed; `conventions`: the manifest's. */
  constructor(tokenizerJson, conventions) {
    this.tokenizer = new Tokenizer(tokenizerJson, {});
    this.conventions = conventions;
    this.special = new Set(conventions.special_token_ids);
    this.wordpiece = conventions.decode === CONTRACT.decode.wordpiece_cjk;
  }

  /** Prompt ids with the family's prefix ([CLS] for uer) and no trailing special token. */
  encode(prompt) {
    const ids = this.tokenizer.encode(prompt, { add_special_tokens: false }).ids;
    return [...this.conventions.prompt_prefix_ids, ...ids];
  }

  /** The WordPiece string of an id (`##` continuations keep their mark; "" outside the vocabulary). */
  piece(tokenId) {
    return this.tokenizer.id_to_token(tokenId) ?? "";
  }

  decode(ids) {
    const assembler = new TextAssembler(this);
    return ids.map((i) => assembler.push(i)).join("") + assembler.flush();
  }
}

/** Turns ids into text one at a time; returns only text that later ids cannot change. */
export class TextAssembler {
  constructor(codec) {
    this.codec = codec;
    this.previousPiece = ""; // last visible WordPiece piece, for the spacing rule
    this.pending = []; // byte-level ids not yet forming whole characters
  }

  push(tokenId) {
    const codec = this.codec;
    if (codec.special.has(tokenId)) return "";
    if (codec.wordpiece) return this.wordpiecePiece(codec.piece(tokenId));
    this.pending.push(tokenId);
    const text = codec.tokenizer.decode(this.pending, { skip_special_tokens: true });
    if (text.endsWith(REPLACEMENT_CHAR)) return ""; // a character split across tokens: wait for its other bytes
    this.pending = [];
    return text;
  }

  wordpiecePiece(piece) {
    if (piece.startsWith("##")) {
      piece = piece.slice(2);
    } else if (this.previousPiece && isWordChar(lastChar(this.previousPiece)) && isWordChar(firstChar(piece))) {
      piece = " " + piece;
    }
    if (piece) this.previousPiece = piece;
    return piece;
  }

  /** Whatever is still held back at the end of generation. */
  flush() {
    if (!this.pending.length) return "";
    const text = this.codec.tokenizer.decode(this.pending, { skip_special_tokens: true });
    this.pending = [];
    return text;
  }
}

const firstChar = (s) => (s ? String.fromCodePoint(s.codePointAt(0)) : undefined);
const lastChar = (s) => [...s].pop();

/**
 * The text of one generated sequence, emitted piece by piece, with stop strings: text that could still turn out
 * to begin a stop string is held back, so a piece once emitted is never taken back; a found stop string ends the
 * text before it.
 */
export class TextStream {
  constructor(codec, stops) {
    this.assembler = new TextAssembler(codec);
    this.stops = stops;
    this.longest = Math.max(0, ...stops.map((s) => s.length));
    this.text = ""; // everything decoded so far
    this.emitted = 0; // length of the prefix of `text` already returned
  }

  /** [new text safe to show, whether a stop string ended the sequence]. */
  push(tokenId) {
    const old = this.text.length;
    this.text += this.assembler.push(tokenId);
    if (!this.stops.length) return [this.take(this.text.length), false];
    const window = Math.max(0, old - this.longest + 1);
    const hits = this.stops.map((s) => this.text.indexOf(s, window)).filter((i) => i >= 0);
    if (hits.length) {
      this.text = this.text.slice(0, Math.min(...hits));
      return [this.take(this.text.length), true];
    }
    return [this.take(this.text.length - this.heldBack()), false];
  }

  /** Length of the longest end of the text that is a proper prefix of a stop string. */
  heldBack() {
    for (let n = Math.min(this.text.length, this.longest - 1); n > 0; n--) {
      const tail = this.text.slice(-n);
      if (this.stops.some((s) => s.startsWith(tail))) return n;
    }
    return 0;
  }

  take(upto) {
    // never end a piece between the two halves of a surrogate pair: the character waits for the next piece
    if (upto > this.emitted && upto < this.text.length && isHighSurrogate(this.text.charCodeAt(upto - 1))) upto -= 1;
    const piece = this.text.slice(this.emitted, upto);
    this.emitted = Math.max(this.emitted, upto);
    return piece;
  }

  /** The rest of the text at the end of generation (held-back text included). */
  finish() {
    this.text += this.assembler.flush();
    return this.take(this.text.length);
  }
}

const isHighSurrogate = (code) => code >= 0xd800 && code <= 0xdbff;
