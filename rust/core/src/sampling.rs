//! Picking the next token from a row of logits: temperature, top-k, top-p (nucleus), then
//! inverse-CDF sampling with a uniform number `u` in [0, 1) that the caller draws, so the
//! caller's generator (and its seed) decides the stream. Greedy when the temperature is 0.

use crate::error::{Error, Result};
use crate::real::Real;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    pub temperature: f64,
    /// Keep the k most likely tokens (ties with the k-th are kept too).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose mass reaches p (at least one token).
    pub top_p: Option<f64>,
}

impl Sampling {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(Error::Invalid(format!("temperature must be a finite number >= 0, got {}", self.temperature)));
        }
        if self.top_k == Some(0) {
            return Err(Error::Invalid("top-k must be at least 1, got 0".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Invalid(format!("top-p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// Reusable buffers, so sampling many rows allocates once.
#[derive(Default)]
pub struct Scratch {
    probs: Vec<f64>,
    order: Vec<usize>,
}

/// One token id drawn from `logits` (V). NaN or +inf logits are an error; -inf marks a token
/// that may never be drawn.
pub fn sample_row<F: Real>(logits: &[F], u: f64, cfg: &Sampling, scratch: &mut Scratch) -> Result<usize> {
    if let Some(i) = logits.iter().position(|x| x.to_f64().is_nan() || x.to_f64() == f64::INFINITY) {
        return Err(Error::NonFinite(format!("logit {i} is {}", logits[i].to_f64())));
    }
    let best = argmax(logits).ok_or_else(|| Error::Invalid("no token can be drawn: every logit is -inf".into()))?;
    if cfg.temperature == 0.0 {
        return Ok(best);
    }
    let probs = &mut scratch.probs;
    probs.clear();
    probs.extend(logits.iter().map(|x| x.to_f64() / cfg.temperature));
    if let Some(k) = cfg.top_k.filter(|&k| k < probs.len()) {
        let order = &mut scratch.order;
        order.clear();
        order.extend(0..probs.len());
        order.select_nth_unstable_by(k - 1, |&a, &b| probs[b].total_cmp(&probs[a]));
        let kth = probs[order[k - 1]];
        probs.iter_mut().filter(|l| **l < kth).for_each(|l| *l = f64::NEG_INFINITY);
    }
    // Softmax relative to the largest logit, so exp never overflows.
    let max = probs[best];
    probs.iter_mut().for_each(|l| *l = (*l - max).exp());
    if let Some(p) = cfg.top_p.filter(|&p| p < 1.0) {
        let total: f64 = probs.iter().sum();
        let order = &mut scratch.order;
        order.clear();
        order.extend(0..probs.len());
        order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a])); // stable: ties keep id order
        let mut mass_before = 0.0;
        for &i in order.iter() {
            let pi = probs[i] / total;
            if mass_before >= p {
                probs[i] = 0.0;
            }
            mass_before += pi;
        }
    }
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut cdf = 0.0;
    for (i, &pi) in probs.iter().enumerate() {
        cdf += pi;
        if cdf > target {
            return Ok(i);
        }
    }
    // u * total can round up to the very sum: take the last token that has any mass.
    Ok(probs.iter().rposition(|&pi| pi > 0.0).unwrap_or(best))
}

/// The first index of the largest value, ignoring nothing (callers reject NaN first); None if
/// every value is -inf.
fn argmax<F: Real>(xs: &[F]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, x) in xs.iter().enumerate() {
        let x = x.to_f64();
        if x > best.map_or(f64::NEG_INFINITY, |(_, b)| b) {
            best = Some((i, x));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(logits: &[f64], cfg: Sampling, n: usize) -> Vec<f64> {
        let mut counts = vec![0.0; logits.len()];
        let mut scratch = Scratch::default();
        for i in 0..n {
            let u = (i as f64 + 0.5) / n as f64; // an even grid of u: exact frequencies
            counts[sample_row(logits, u, &cfg, &mut scratch).unwrap()] += 1.0 / n as f64;
        }
        counts
    }

    const PLAIN: Sampling = Sampling { temperature: 1.0, top_k: None, top_p: None };

    #[test]
    fn frequencies_follow_the_softmax() {
        let probs = [0.5, 0.3, 0.15, 0.05];
        let logits: Vec<f64> = probs.iter().map(|p: &f64| p.ln() + 7.0).collect();
        for (f, p) in draw(&logits, PLAIN, 10_000).iter().zip(probs) {
            assert!((f - p).abs() < 1e-3, "{f} vs {p}");
        }
    }

    #[test]
    fn top_k_top_p_and_greedy() {
        let logits = [1.0, 5.0, 3.0, 4.0];
        let kept = |cfg| draw(&logits, cfg, 1000).iter().map(|&f| f > 0.0).collect::<Vec<_>>();
        assert_eq!(kept(Sampling { top_k: Some(2), ..PLAIN }), [false, true, false, true]);
        // softmax of these logits: 0.012, 0.657, 0.089, 0.242; the top two hold 0.899
        assert_eq!(kept(Sampling { top_p: Some(0.89), ..PLAIN }), [false, true, false, true]);
        assert_eq!(kept(Sampling { top_p: Some(0.9), ..PLAIN }), [false, true, true, true]);
        let greedy = Sampling { temperature: 0.0, ..PLAIN };
        assert_eq!(sample_row(&logits, 0.99, &greedy, &mut Scratch::default()).unwrap(), 1);
    }

    #[test]
    fn bad_logits_are_errors() {
        let mut s = Scratch::default();
        assert!(sample_row(&[0.0, f64::NAN], 0.5, &PLAIN, &mut s).is_err());
        assert!(sample_row(&[0.0, f64::INFINITY], 0.5, &PLAIN, &mut s).is_err());
        assert!(sample_row(&[f64::NEG_INFINITY; 3], 0.5, &PLAIN, &mut s).is_err());
        assert_eq!(sample_row(&[f64::NEG_INFINITY, 0.0], 0.0, &PLAIN, &mut s).unwrap(), 1);
    }
}
