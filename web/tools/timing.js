// Batch-1 greedy timing shared by the Node.js and browser measurements of `bench --only web`: a warm-up run, then
// `reps` runs, each timed at every token it yields.

/** { runs: [{ time_to_first_token_s, decode_tokens_per_s }], token_ids } of a Generator on a prompt's ids. */
export async function timeGenerator(gen, promptIds, newTokens, reps) {
  const prompt = gen.decode(promptIds);
  if (JSON.stringify(gen.encode(prompt)) !== JSON.stringify(promptIds)) throw new Error("the prompt ids do not round-trip");
  const options = { max_new_tokens: newTokens, do_sample: false, stop_token_ids: [] };
  return timeRuns(reps, async (mark) => {
    const ids = [];
    for await (const event of gen.events(prompt, options)) {
      mark();
      ids.push(...event.tokens);
    }
    return ids;
  });
}

/** A warm-up call of `generate(mark)` (which calls `mark` at each new token and returns the new ids), then `reps` timed. */
export async function timeRuns(reps, generate) {
  const once = async () => {
    const times = [];
    const start = performance.now();
    const ids = await generate(() => times.push(performance.now()));
    const decode = (times.at(-1) - times[0]) / 1000;
    const timing = {
      time_to_first_token_s: (times[0] - start) / 1000,
      decode_tokens_per_s: times.length > 1 ? (times.length - 1) / decode : 0,
    };
    return [timing, ids];
  };
  await once(); // the first calls allocate
  const runs = [];
  let ids;
  for (let i = 0; i < reps; i++) {
    let timing;
    [timing, ids] = await once();
    runs.push(timing);
  }
  return { runs, token_ids: ids };
}
