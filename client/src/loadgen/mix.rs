//! A weighted cycle of priorities (`--priority high:2,medium:1`).

use pinstream_core::event::Priority;

use super::MAX_MIX_WEIGHT;

/// A weighted mix of priorities, e.g. `critical:1,high:2,medium:4,low:1,batch:1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PriorityMix {
    /// Weight per priority, by wire code.
    weights: [u32; 5],
}

impl PriorityMix {
    /// Every event with priority `p`.
    pub fn single(p: Priority) -> Self {
        let mut weights = [0; 5];
        weights[usize::from(p.as_u8())] = 1;
        Self { weights }
    }

    /// Parses `name[:weight],...` with the names of [`Priority::name`] (`critical`, `high`,
    /// `medium`, `low`, `batch`, in any case) and weights 0 or more (1 when left out); a name appears once at most.
    ///
    /// ```
    /// use pinstream_core::event::Priority;
    /// use pinstream_client::loadgen::PriorityMix;
    ///
    /// let mix = PriorityMix::parse("high:1,medium:3").unwrap();
    /// assert_eq!(mix.weight(Priority::Medium), 3);
    /// assert_eq!(mix.schedule().len(), 4);
    /// assert!(PriorityMix::parse("urgent").is_err());
    /// ```
    ///
    /// # Errors
    /// An unknown name, a weight that is not a number, a name given twice, weights that sum
    /// to 0 or (divided by their greatest common divisor) above [`MAX_MIX_WEIGHT`].
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut weights = [0u32; 5];
        let mut seen = [false; 5];
        for part in s.split(',') {
            let part = part.trim();
            let (name, weight) = match part.split_once(':') {
                Some((n, w)) => {
                    let w = w.trim().parse::<u32>().map_err(|e| {
                        format!(
                            "priority mix {s:?}: weight {w:?} of {n:?} is not a whole number ({e})"
                        )
                    })?;
                    (n.trim(), w)
                }
                None => (part, 1),
            };
            let Some(p) = Priority::ALL
                .into_iter()
                .find(|p| p.name().eq_ignore_ascii_case(name))
            else {
                let names: Vec<_> = Priority::ALL.iter().map(|p| p.name()).collect();
                return Err(format!(
                    "priority mix {s:?}: unknown priority {name:?}; use {} with optional :weight, e.g. critical:1,medium:4",
                    names.join(", ")
                ));
            };
            let i = usize::from(p.as_u8());
            if seen[i] {
                return Err(format!("priority mix {s:?}: {} is given twice", p.name()));
            }
            seen[i] = true;
            weights[i] = weight;
        }
        let divisor = weights.iter().fold(0, |g, &w| gcd(g, w));
        if divisor == 0 {
            return Err(format!(
                "priority mix {s:?}: the weights sum to 0; give at least one priority a weight above 0"
            ));
        }
        let total: u64 = weights.iter().map(|&w| u64::from(w / divisor)).sum();
        if total > u64::from(MAX_MIX_WEIGHT) {
            return Err(format!(
                "priority mix {s:?}: the weights (divided by their common divisor {divisor}) sum to {total}, above {MAX_MIX_WEIGHT}; use smaller weights"
            ));
        }
        for w in &mut weights {
            *w /= divisor;
        }
        Ok(Self { weights })
    }

    /// The weight of `p` (after dividing by the weights' common divisor).
    pub fn weight(&self, p: Priority) -> u32 {
        self.weights[usize::from(p.as_u8())]
    }

    /// One cycle of priorities, each as often as its weight, spread out evenly (smooth
    /// weighted round robin): `high:1,medium:3` gives `medium, high, medium, medium`. Every
    /// whole number of cycles has the mix's proportions exactly.
    pub fn schedule(&self) -> Vec<Priority> {
        let total: i64 = self.weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = [0i64; 5];
        let mut out = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for _ in 0..total {
            let mut best = 0;
            for i in 0..5 {
                current[i] += i64::from(self.weights[i]);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            // `best` indexes `weights`, by wire code: a valid one.
            out.extend(Priority::from_u8(best as u8));
        }
        out
    }
}

impl std::fmt::Display for PriorityMix {
    /// `name:weight` for every priority with a weight, comma separated.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for p in Priority::ALL {
            let w = self.weight(p);
            if w > 0 {
                if !first {
                    f.write_str(",")?;
                }
                write!(f, "{}:{w}", p.name())?;
                first = false;
            }
        }
        Ok(())
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}
