// Beam search as Hugging Face transformers (≥ 4.50) runs it, so that kiln returns the same beams and
// scores: each step keeps the 2·numBeams best continuations of all running beams; the best numBeams of
// those that did not just finish run on; finished candidates among the top numBeams compete for the
// numBeams finished slots with score = sum of log probs / generated length ** lengthPenalty.
// Pure bookkeeping over log-prob rows: the runtime forks and frees the sequences it names.

const DEAD = -1e9; // transformers' stand-in for "never choose this"

export interface BeamSearchConfig {
  numBeams: number;
  lengthPenalty: number;
  earlyStopping: boolean;
  endId: number | null;
  promptLen: number;
  /** Prompt length + most new tokens. */
  maxLen: number;
}

export interface Hypothesis {
  /** Generated tokens (the end id included when it ended the beam). */
  tokens: number[];
  logProbs: number[];
  /** Sum of the tokens' log probs. */
  cumLogProb: number;
  /** cumLogProb / tokens.length ** lengthPenalty */
  score: number;
  /** Index of the running beam it extends (for the caller's own per-beam data). */
  parent: number;
}

export interface RunningBeam {
  tokens: number[];
  logProbs: number[];
  /** Accumulated log prob as transformers keeps it (DEAD-shifted for beams that just finished). */
  score: number;
  parent: number;
}

export class BeamSearch {
  running: RunningBeam[];
  finished: Hypothesis[] = [];
  private improvable = true;
  done = false;

  constructor(readonly cfg: BeamSearchConfig) {
    // One beam holds the prompt; the others start dead so step 0 expands only the first.
    this.running = Array.from({ length: cfg.numBeams }, (_, i) => ({
      tokens: [],
      logProbs: [],
      score: i === 0 ? 0 : DEAD,
      parent: i,
    }));
  }

  /**
   * One step: `logProbs[b]` is the log-softmax row of running beam b. Updates the running beams (each names
   * its parent among the previous ones) and the finished hypotheses; sets `done` when the search ends.
   */
  step(logProbs: readonly Float64Array[]): void {
    const { numBeams, endId, promptLen, maxLen, lengthPenalty, earlyStopping } = this.cfg;
    const curLen = promptLen + this.running[0].tokens.length;
    const keep = 2 * numBeams;
    const top = topContinuations(logProbs, this.running, keep);
    const hits = top.map((c) => c.token === endId || curLen + 1 >= maxLen);
    const extend = (c: Candidate): RunningBeam => ({
      tokens: [...this.running[c.beam].tokens, c.token],
      logProbs: [...this.running[c.beam].logProbs, c.logProb],
      score: c.score,
      parent: c.beam,
    });

    // Finished: only the top numBeams candidates may finish, and only while improvement is possible.
    const full = this.finished.length === numBeams;
    if (this.improvable && !(full && earlyStopping)) {
      const newLen = curLen + 1 - promptLen;
      for (let k = 0; k < numBeams; k++) {
        if (!hits[k]) continue;
        const b = extend(top[k]);
        this.finished.push({ ...b, cumLogProb: b.score, score: b.score / newLen ** lengthPenalty });
      }
      this.finished.sort((a, b) => b.score - a.score);
      this.finished.length = Math.min(this.finished.length, numBeams);
    }

    // Running: the best numBeams candidates, those that just finished pushed to the back.
    const order = top.map((c, k) => ({ c, s: c.score + (hits[k] ? DEAD : 0), k }));
    order.sort((a, b) => b.s - a.s || a.k - b.k);
    this.running = order.slice(0, numBeams).map(({ c, s }) => ({ ...extend(c), score: s }));

    const len = curLen + 1 - promptLen;
    if (this.finished.length === numBeams) {
      const bestPossible = this.running[0].score / len ** lengthPenalty;
      const worstFinished = this.finished[numBeams - 1].score;
      this.improvable &&= bestPossible > worstFinished;
    }
    this.done = !this.improvable || (this.finished.length === numBeams && earlyStopping) || hits.every((h) => h);
  }
}

interface Candidate {
  beam: number;
  token: number;
  logProb: number;
  /** Running beam score + logProb. */
  score: number;
}

/** The `keep` best (beam, token) continuations by accumulated score, best first (ties: lower index first). */
function topContinuations(
  logProbs: readonly Float64Array[],
  running: readonly RunningBeam[],
  keep: number,
): Candidate[] {
  const best: Candidate[] = [];
  let floor = Number.NEGATIVE_INFINITY;
  for (let b = 0; b < logProbs.length; b++) {
    const row = logProbs[b];
    const base = running[b].score;
    for (let v = 0; v < row.length; v++) {
      const score = base + row[v];
      if (best.length === keep && !(score > floor)) continue;
      let i = best.length;
      while (i > 0 && best[i - 1].score < score) i--;
      best.splice(i, 0, { beam: b, token: v, logProb: row[v], score });
      if (best.length > keep) best.pop();
      if (best.length === keep) floor = best[keep - 1].score;
    }
  }
  return best;
}
