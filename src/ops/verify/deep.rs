//! `--deep`: every stored float value scanned for NaN/Inf, with per-tensor statistics.
use super::{Kind, Report, Stored, TensorReport};
use crate::error::one_line;
use crate::human::human_bytes;
use crate::ops::stats::{self, Stats};
use crate::progress::Reporter;
use anyhow::Result;

pub(super) fn deep(
    stored: &[Stored],
    jobs: usize,
    progress: &dyn Reporter,
    r: &mut Report,
) -> Result<()> {
    let mark = r.problems.len();
    let mut items = Vec::new();
    let mut which = Vec::new();
    for (i, s) in stored.iter().enumerate() {
        if !s.info.dtype.is_float() && !s.info.dtype.is_fp8() {
            continue;
        }
        match &s.item {
            Some(it) => {
                items.push(it.clone());
                which.push(i);
            }
            None => r.problem(
                Kind::Unscannable,
                Some(&s.file),
                Some(&s.info.name),
                format!(
                    "{}: {} is a non-contiguous view and was not scanned",
                    s.file, s.info.name
                ),
            ),
        }
    }
    let total: u64 = items.iter().map(|i| i.nbytes).sum();
    let task = progress.task("scan", Some(total));
    let results = stats::scan_all(&items, jobs, &|n| task.advance(n))?;
    task.finish();
    r.scanned_bytes = total;
    let finite = |v: f64| v.is_finite().then_some(v);
    for (&i, res) in which.iter().zip(results) {
        let s = &stored[i];
        let st: Stats = match res {
            Ok(st) => st,
            Err(e) => {
                r.problem(
                    Kind::Unreadable,
                    Some(&s.file),
                    Some(&s.info.name),
                    one_line(&e),
                );
                continue;
            }
        };
        if st.non_finite() > 0 {
            r.problem(
                Kind::NonFinite,
                Some(&s.file),
                Some(&s.info.name),
                format!(
                    "{}: {} has {} NaN and {} Inf values",
                    s.file, s.info.name, st.nan, st.inf
                ),
            );
        }
        let has = st.count > 0;
        r.tensors.push(TensorReport {
            file: s.file.clone(),
            name: s.info.name.clone(),
            dtype: s.info.dtype.name().into(),
            shape: s.info.shape.clone(),
            nan: st.nan,
            inf: st.inf,
            min: finite(st.min).filter(|_| has),
            max: finite(st.max).filter(|_| has),
            mean: finite(st.mean).filter(|_| has),
            std: finite(st.std()).filter(|_| has),
        });
    }
    r.settle(
        "values",
        mark,
        format!(
            "{} tensors, {} scanned, no NaN/Inf",
            r.tensors.len(),
            human_bytes(total)
        ),
    );
    Ok(())
}
