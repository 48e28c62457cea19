// Progress for long work: a bar on a terminal, nothing when output is piped or in CI.

import cliProgress from "cli-progress";

export interface Progress {
  tick(label?: string): void;
  done(): void;
}

export function progress(title: string, total: number): Progress {
  if (!process.stderr.isTTY || process.env.CI) return { tick() {}, done() {} };
  const bar = new cliProgress.SingleBar(
    {
      format: `${title} [{bar}] {value}/{total} {label}`,
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { label: "" });
  return {
    tick(label = "") {
      bar.increment(1, { label });
    },
    done() {
      bar.stop();
    },
  };
}
