//! The comparison judgement (`slo.judgement = "compare"`), as Kayenta judges a canary: the
//! target's latency samples against the source's over the same step, by a one-sided
//! Mann-Whitney U test (is the target's latency stochastically greater?). A rank test assumes
//! no distribution, which suits latencies, and compares the two regions under the same load at
//! the same time, so a slow afternoon on both sides is not a breach. Pure arithmetic: no I/O,
//! no clock.

/// Significance level: the target is judged slower when the one-sided p-value is below 5 %,
/// Kayenta's default for its Mann-Whitney classifier.
pub const ALPHA: f64 = 0.05;
/// Fewest samples per side before comparing: with 5 and 5 the smallest one-sided p-value is
/// 1/252, so a consistently slower target can be told apart (with 3 and 3 it is 1/20, never
/// below [`ALPHA`]).
pub const MIN_SAMPLES_PER_SIDE: usize = 5;

/// The outcome of a comparison.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Comparison {
    /// The U statistic of the target sample.
    pub u: f64,
    /// One-sided p-value of "the target's values are greater" (normal approximation with tie
    /// and continuity corrections).
    pub p_value: f64,
}

impl Comparison {
    /// Whether the target is significantly greater at [`ALPHA`].
    pub fn target_greater(&self) -> bool {
        self.p_value < ALPHA
    }
}

/// Mann-Whitney U of `target` against `source`, one-sided (target greater). `None` when a side
/// has fewer than [`MIN_SAMPLES_PER_SIDE`] finite samples.
pub fn mann_whitney_greater(target: &[f64], source: &[f64]) -> Option<Comparison> {
    let target: Vec<f64> = target.iter().copied().filter(|v| v.is_finite()).collect();
    let source: Vec<f64> = source.iter().copied().filter(|v| v.is_finite()).collect();
    let (n1, n2) = (target.len(), source.len());
    if n1 < MIN_SAMPLES_PER_SIDE || n2 < MIN_SAMPLES_PER_SIDE {
        return None;
    }
    let mut all: Vec<(f64, bool)> = target
        .iter()
        .map(|v| (*v, true))
        .chain(source.iter().map(|v| (*v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let mut rank_sum_target = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their average.
        let rank = (i + j + 2) as f64 / 2.0;
        let tied = (j - i + 1) as f64;
        tie_term += tied * tied * tied - tied;
        rank_sum_target += rank * all[i..=j].iter().filter(|(_, t)| *t).count() as f64;
        i = j + 1;
    }
    let (n1f, n2f, nf) = (n1 as f64, n2 as f64, n as f64);
    let u = rank_sum_target - n1f * (n1f + 1.0) / 2.0;
    let mean = n1f * n2f / 2.0;
    let variance = n1f * n2f / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    let p_value = if variance <= 0.0 {
        // Every sample equal: no evidence either way.
        1.0
    } else {
        let z = (u - mean - 0.5) / variance.sqrt();
        upper_tail(z)
    };
    Some(Comparison { u, p_value })
}

/// P(Z > z) for a standard normal Z.
fn upper_tail(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// The complementary error function (Numerical Recipes' `erfcc`, fractional error below
/// 1.2e-7 everywhere), enough for a p-value compared with 0.05.
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_tail_is_right() {
        for (z, p) in [
            (0.0, 0.5),
            (1.644_853_6, 0.05),
            (1.959_964, 0.025),
            (-1.0, 0.841_344_7),
        ] {
            assert!((upper_tail(z) - p).abs() < 1e-6, "z {z}: {}", upper_tail(z));
        }
    }

    /// (target, source, target judged greater?)
    #[test]
    fn comparisons_table() {
        let slow = [30.0, 31.0, 32.0, 33.0, 34.0, 35.0];
        let fast = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0];
        let mixed = [11.5, 12.5, 13.5, 14.5, 10.5, 15.5];
        type Row<'a> = (&'a str, &'a [f64], &'a [f64], Option<bool>);
        let rows: Vec<Row<'_>> = vec![
            ("clearly slower", &slow, &fast, Some(true)),
            ("clearly faster", &fast, &slow, Some(false)),
            ("interleaved", &mixed, &fast, Some(false)),
            ("all equal", &[5.0; 6], &[5.0; 6], Some(false)),
            ("too few target samples", &slow[..4], &fast, None),
            ("NaN samples do not count", &[f64::NAN; 6], &fast, None),
        ];
        for (name, target, source, expected) in rows {
            let got = mann_whitney_greater(target, source);
            assert_eq!(got.map(|c| c.target_greater()), expected, "{name}: {got:?}");
        }
        // Completely separated 6 and 6: U = 36, the largest it can be.
        let c = mann_whitney_greater(&slow, &fast).unwrap();
        assert_eq!(c.u, 36.0);
        assert!(c.p_value < 0.01, "{c:?}");
    }
}
