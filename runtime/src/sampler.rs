//! Choosing the next token from logits: repetition penalty, then greedy or
//! temperature / top-k / top-p sampling with a seeded generator.

/// Sampling settings (defaults come from the model file's generation defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplerConfig {
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = no top-k cut.
    pub top_k: usize,
    /// 1 = no nucleus cut.
    pub top_p: f32,
    /// 1 = none. Divides positive logits and multiplies negative ones of recent tokens.
    pub repeat_penalty: f32,
    /// How many recent tokens the penalty looks at (llama.cpp's default is 64).
    pub repeat_last_n: usize,
}

/// SplitMix64: small, fast, and the same sequence on every platform for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

pub struct Sampler {
    cfg: SamplerConfig,
    rng: Rng,
    /// (probability or logit, token) scratch, sized once.
    cand: Vec<(f32, u32)>,
}

/// Index of the largest value; the lowest index wins ties; NaN never wins (all NaN: the
/// last index).
///
/// Two passes that vectorise (it runs on every decoded token over the whole vocabulary):
/// the maximum of an order-preserving integer key, then the first index holding it.
pub fn argmax(x: &[f32]) -> u32 {
    // Non-NaN floats in increasing order map to increasing u32 keys (-0 and +0 to the
    // same one: `+ 0.0` turns -0 into +0); NaN maps to 0, below every float's key.
    let key = |v: f32| {
        let b = (v + 0.0).to_bits();
        let k = if b >> 31 == 1 { !b } else { b | 0x8000_0000 };
        k & u32::from(!v.is_nan()).wrapping_neg()
    };
    let best = x.iter().fold(0u32, |m, &v| m.max(key(v)));
    match x.iter().position(|&v| key(v) == best && !v.is_nan()) {
        Some(i) => i as u32,
        None => x.len().saturating_sub(1) as u32,
    }
}

impl Sampler {
    pub fn new(cfg: SamplerConfig, seed: u64, vocab: usize) -> Self {
        Sampler { cfg, rng: Rng::new(seed), cand: Vec::with_capacity(vocab) }
    }

    /// Picks the next token. `logits` is modified (penalty, temperature).
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let c = self.cfg;
        if c.repeat_penalty != 1.0 {
            let recent = &history[history.len().saturating_sub(c.repeat_last_n)..];
            for (i, &t) in recent.iter().enumerate() {
                // Each distinct token is penalised once.
                if recent[..i].contains(&t) {
                    continue;
                }
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / c.repeat_penalty } else { *l * c.repeat_penalty };
                }
            }
        }
        if c.temperature <= 0.0 {
            return argmax(logits);
        }
        self.cand.clear();
        self.cand.extend(logits.iter().enumerate().filter(|(_, l)| !l.is_nan()).map(|(i, &l)| (l, i as u32)));
        if self.cand.is_empty() {
            return 0;
        }
        // Dividing by the temperature keeps the order, so the cuts work on the logits.
        let desc = |a: &(f32, u32), b: &(f32, u32)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        if c.top_k > 0 && c.top_k < self.cand.len() {
            self.cand.select_nth_unstable_by(c.top_k - 1, desc);
            self.cand.truncate(c.top_k);
        }
        self.cand.sort_unstable_by(desc);
        let max = self.cand[0].0;
        if !max.is_finite() {
            // An infinite logit (or only -inf ones): its token is the only finite choice.
            return self.cand[0].1;
        }
        // exp((l - max) / T): l - max <= 0, so a tiny T gives 0 or 1, never inf - inf = NaN
        // (as (l / T) - (max / T) did once l / T overflowed: the worst token then won).
        let mut sum = 0.0f32;
        for p in self.cand.iter_mut() {
            p.0 = ((p.0 - max) / c.temperature).exp();
            sum += p.0;
        }
        if c.top_p < 1.0 {
            let mut cum = 0.0;
            let mut keep = self.cand.len();
            for (i, p) in self.cand.iter().enumerate() {
                cum += p.0 / sum;
                if cum >= c.top_p {
                    keep = i + 1;
                    break;
                }
            }
            self.cand.truncate(keep);
            sum = self.cand.iter().map(|p| p.0).sum();
        }
        let r = self.rng.next_f32() * sum;
        let mut cum = 0.0;
        for &(p, t) in &self.cand {
            cum += p;
            if r < cum {
                return t;
            }
        }
        self.cand.last().map_or(0, |p| p.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(temperature: f32, top_k: usize, top_p: f32, repeat_penalty: f32) -> SamplerConfig {
        SamplerConfig { temperature, top_k, top_p, repeat_penalty, repeat_last_n: 64 }
    }

    #[test]
    fn greedy_picks_argmax_and_first_of_ties() {
        let mut s = Sampler::new(cfg(0.0, 0, 1.0, 1.0), 1, 4);
        assert_eq!(s.sample(&mut [0.1, 2.0, 2.0, -1.0], &[]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.5]), 1);
        assert_eq!(argmax(&[f32::NAN, f32::NAN, 0.5]), 2);
        assert_eq!(argmax(&[f32::NAN, f32::NAN]), 1);
        assert_eq!(argmax(&[f32::NEG_INFINITY, f32::NEG_INFINITY]), 0);
        assert_eq!(argmax(&[-3.0, -0.0, 0.0, -1.0]), 1);
        assert_eq!(argmax(&[-3.0, -2.0, f32::INFINITY, 7.0]), 2);
        // Against the plain definition on mixed values.
        let mut seed = 7u32;
        let v: Vec<f32> = (0..1000)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                ((seed >> 8) % 2001) as f32 / 100.0 - 10.0
            })
            .collect();
        let mut want = 0;
        for (i, &x) in v.iter().enumerate() {
            if x > v[want] {
                want = i;
            }
        }
        assert_eq!(argmax(&v), want as u32);
    }

    #[test]
    fn repetition_penalty_changes_the_greedy_choice() {
        let mut s = Sampler::new(cfg(0.0, 0, 1.0, 2.0), 1, 3);
        // Token 0 (3.0 -> 1.5) falls below token 1 (2.0).
        assert_eq!(s.sample(&mut [3.0, 2.0, -1.0], &[0, 0]), 1);
        // Negative logits are multiplied: token 2 (-1 -> -2) stays last.
        let mut l = [3.0, 2.0, -1.0];
        s.sample(&mut l, &[2]);
        assert_eq!(l[2], -2.0);
    }

    #[test]
    fn top_k_one_is_greedy_and_seed_reproduces() {
        let logits = [0.5f32, 1.5, 1.0, -2.0, 0.0];
        let mut s = Sampler::new(cfg(1.0, 1, 1.0, 1.0), 7, 5);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 1);
        }
        let draw = |seed| {
            let mut s = Sampler::new(cfg(1.0, 0, 1.0, 1.0), seed, 5);
            (0..50).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        // Every token has some probability at temperature 1 without cuts.
        let seen: std::collections::HashSet<u32> = draw(5).into_iter().chain(draw(6)).collect();
        assert!(seen.len() >= 4, "{seen:?}");
    }

    #[test]
    fn extreme_temperatures_and_infinite_logits_stay_sane() {
        let logits = [0.5f32, 1.5, 1.0, f32::NEG_INFINITY];
        // A temperature so small that logit / T overflows f32: greedy, not the worst token.
        for t in [1e-30f32, 1e-38, 1e-45] {
            let mut s = Sampler::new(cfg(t, 0, 1.0, 1.0), 3, 4);
            for _ in 0..20 {
                assert_eq!(s.sample(&mut logits.clone(), &[]), 1, "temperature {t}");
            }
        }
        // A huge temperature: every finite token appears, -inf never.
        let mut s = Sampler::new(cfg(1e30, 0, 1.0, 1.0), 3, 4);
        let seen: std::collections::HashSet<u32> = (0..200).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(seen, [0, 1, 2].into_iter().collect());
        // A +inf logit wins; all -inf gives the first of them.
        let mut s = Sampler::new(cfg(1.0, 0, 0.9, 1.0), 3, 4);
        assert_eq!(s.sample(&mut [0.5, f32::INFINITY, 1.0, 2.0], &[]), 1);
        assert_eq!(s.sample(&mut [f32::NEG_INFINITY; 4], &[]), 0);
    }

    #[test]
    fn top_p_keeps_only_the_nucleus() {
        // Probabilities ~0.88, 0.12, ~0: top_p 0.5 keeps only the first.
        let logits = [2.0f32, 0.0, -20.0];
        let mut s = Sampler::new(cfg(1.0, 0, 0.5, 1.0), 9, 3);
        for _ in 0..50 {
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
        }
        // top_p 0.95 keeps the first two: both appear over many draws.
        let mut s = Sampler::new(cfg(1.0, 0, 0.95, 1.0), 9, 3);
        let got: std::collections::HashSet<u32> = (0..200).map(|_| s.sample(&mut logits.clone(), &[])).collect();
        assert_eq!(got, [0, 1].into_iter().collect());
    }
}
