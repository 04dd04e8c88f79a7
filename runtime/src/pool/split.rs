//! How a region's output is cut into the bands its jobs write: chunks of one or several
//! slices, pairs of chunks, columns of a grid. Each band is a disjoint `&mut` piece, so a
//! job cannot touch another's.

use super::for_bands;

/// Splits `out` into chunks of `chunk` elements (the last may be shorter) and runs
/// `job(index, chunk)` for each, in parallel.
#[track_caller]
pub fn for_each_chunk_mut<T: Send>(out: &mut [T], chunk: usize, job: &(dyn Fn(usize, &mut [T]) + Sync)) {
    for_each_chunk_mut_n([out], [chunk], &|_, b, c| job(b, c));
}

/// Like [`for_each_chunk_mut`] over several slices in one parallel region: slice `i`
/// is split into chunks of `chunks[i]` elements (the last may be shorter) and
/// `job(i, c, chunk)` runs for every chunk `c` of every slice. One region instead of
/// `N` saves a fork-join per slice (q/k/v, gate/up).
#[track_caller]
pub fn for_each_chunk_mut_n<T: Send, const N: usize>(
    outs: [&mut [T]; N],
    chunks: [usize; N],
    job: &(dyn Fn(usize, usize, &mut [T]) + Sync),
) {
    let chunks = chunks.map(|c| c.max(1));
    let lens = outs.each_ref().map(|o| o.len());
    let counts: [usize; N] = std::array::from_fn(|i| lens[i].div_ceil(chunks[i]));
    let bases = outs.map(|o| SharedMut(o.as_mut_ptr()));
    for_bands(counts.iter().sum(), &|mut b| {
        let mut i = 0;
        while b >= counts[i] {
            b -= counts[i];
            i += 1;
        }
        let start = b * chunks[i];
        // SAFETY: chunk `b` of slice `i` lies inside it (start < lens[i]); chunks of one
        // slice are disjoint and the slices are distinct `&mut` borrows; `for_bands` runs
        // each band, so each (i, b), exactly once; and every slice stays mutably borrowed
        // for the whole call, which returns only after every job is done.
        let slice =
            unsafe { std::slice::from_raw_parts_mut(bases[i].ptr().add(start), chunks[i].min(lens[i] - start)) };
        job(i, b, slice);
    });
}

/// The chunks of one column, over a run of rows, of a grid of chunks (see
/// [`for_each_column_mut`]): one row at a time.
pub struct ColumnMut<'a, T> {
    base: SharedMut<T>,
    chunk: usize,
    /// Elements per row of the grid (the last column's chunks may be shorter than `chunk`).
    width: usize,
    col: usize,
    rows: std::ops::Range<usize>,
    _out: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> ColumnMut<'_, T> {
    /// The chunk of row `r` (which must be in this job's run of rows) in this column.
    pub fn row(&mut self, r: usize) -> &mut [T] {
        assert!(self.rows.contains(&r), "row {r} is not in this job's rows {:?}", self.rows);
        let start = self.col * self.chunk;
        // SAFETY: the chunk (r, col) lies inside `out` (r < rows, start < width, both
        // checked in `for_each_column_mut`, and it ends at the row's end at the latest);
        // only this job holds (r, col) (its column and run of rows are its own); and the
        // slice borrows `self` mutably, so no two live at once.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.base.ptr().add(r * self.width + start),
                self.chunk.min(self.width - start),
            )
        }
    }
}

/// A job over one column's run of rows: `(col, rows, column)`.
pub type ColumnJob<'a, T> = dyn Fn(usize, std::ops::Range<usize>, &mut ColumnMut<'_, T>) + Sync + 'a;

/// For `out` of `rows` rows (row-major), each cut into `cols` chunks of `chunk` elements
/// (the last may be shorter), runs `job(col, row_range, column)` for every column and
/// every run of up to `run` rows, in parallel, column by column: each job writes its rows
/// of its column through `column` (attention: one head's outputs for a run of a prompt's
/// tokens; the output projection: a band of the vocabulary for every row of a step).
#[track_caller]
pub fn for_each_column_mut<T: Send>(out: &mut [T], chunk: usize, rows: usize, run: usize, job: &ColumnJob<'_, T>) {
    let width = out.len() / rows.max(1);
    assert!(
        out.len() == rows * width && chunk > 0 && run > 0,
        "for_each_column_mut: {} is not {rows} rows, or a chunk or run is empty",
        out.len()
    );
    let cols = width.div_ceil(chunk);
    let runs = rows.div_ceil(run);
    let base = SharedMut(out.as_mut_ptr());
    for_bands(cols * runs, &|b| {
        let (col, r0) = (b / runs, b % runs * run);
        let rows = r0..(r0 + run).min(rows);
        let mut column = ColumnMut {
            base: SharedMut(base.ptr()),
            chunk,
            width,
            col,
            rows: rows.clone(),
            _out: std::marker::PhantomData,
        };
        job(col, rows, &mut column);
    });
}

/// A job over one chunk of each of two slices.
pub type PairJob<'a, A, B> = dyn Fn(usize, &mut [A], &mut [B]) + Sync + 'a;

/// Like [`for_each_chunk_mut`] over two slices at once: job `i` gets chunk `i` of `a`
/// (`ca` elements) and chunk `i` of `b` (`cb` elements), for `i < n`. Both slices must
/// hold `n` whole chunks.
#[track_caller]
pub fn for_each_chunk_mut2<A: Send, B: Send>(
    n: usize,
    a: &mut [A],
    ca: usize,
    b: &mut [B],
    cb: usize,
    job: &PairJob<'_, A, B>,
) {
    assert!(a.len() >= n * ca && b.len() >= n * cb, "for_each_chunk_mut2: slices shorter than {n} chunks");
    if n == 1 {
        return job(0, &mut a[..ca], &mut b[..cb]);
    }
    let (pa, pb) = (SharedMut(a.as_mut_ptr()), SharedMut(b.as_mut_ptr()));
    for_bands(n, &|i| {
        // SAFETY: as in `for_each_chunk_mut_n`: chunk `i` of each slice lies inside it (both
        // hold `n` whole chunks, checked above), chunks are disjoint, each index runs
        // once, and both slices stay mutably borrowed until every job has returned.
        let (ra, rb) = unsafe {
            (
                std::slice::from_raw_parts_mut(pa.ptr().add(i * ca), ca),
                std::slice::from_raw_parts_mut(pb.ptr().add(i * cb), cb),
            )
        };
        job(i, ra, rb);
    });
}

/// A raw pointer shared by the threads of one region (see `for_each_chunk_mut_n`).
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);

impl<T> SharedMut<T> {
    /// (A method, so that closures capture the `Sync` wrapper rather than the raw field.)
    fn ptr(&self) -> *mut T {
        self.0
    }
}

// SAFETY: only used by `for_each_chunk_mut_n`, `for_each_chunk_mut2` and `ColumnMut`, where
// each thread touches disjoint chunks.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Pool;

    #[test]
    fn chunks_of_several_slices_cover_each_once() {
        for pool in [Some(Pool::new(2)), None] {
            let (mut a, mut b, mut c) = (vec![0usize; 1001], vec![0usize; 7], vec![0usize; 0]);
            let fill = |a: &mut [usize], b: &mut [usize], c: &mut [usize]| {
                for_each_chunk_mut_n([a, b, c], [100, 3, 5], &|i, k, chunk| {
                    let size = [100, 3, 5][i];
                    for (j, o) in chunk.iter_mut().enumerate() {
                        *o += (i + 1) * 10_000 + k * size + j;
                    }
                })
            };
            match &pool {
                Some(p) => p.install(|| fill(&mut a, &mut b, &mut c)),
                None => fill(&mut a, &mut b, &mut c),
            }
            assert!(a.iter().enumerate().all(|(j, &v)| v == 10_000 + j));
            assert!(b.iter().enumerate().all(|(j, &v)| v == 20_000 + j));
        }
    }

    #[test]
    fn paired_chunks_go_together() {
        for pool in [Some(Pool::new(2)), None] {
            for n in [1usize, 2, 7, 40] {
                let (mut a, mut b) = (vec![0usize; n * 3], vec![0u8; n * 2 + 5]);
                let fill = |a: &mut [usize], b: &mut [u8]| {
                    for_each_chunk_mut2(n, a, 3, b, 2, &|i, ca, cb| {
                        ca.fill(i + 1);
                        cb.fill(i as u8 + 1);
                    })
                };
                match &pool {
                    Some(p) => p.install(|| fill(&mut a, &mut b)),
                    None => fill(&mut a, &mut b),
                }
                assert!(a.iter().enumerate().all(|(k, &v)| v == k / 3 + 1), "n {n}");
                assert!(b[..n * 2].iter().enumerate().all(|(k, &v)| usize::from(v) == k / 2 + 1), "n {n}");
                assert!(b[n * 2..].iter().all(|&v| v == 0), "n {n}");
            }
        }
    }

    #[test]
    fn columns_cover_the_grid_once_in_runs_of_rows() {
        for pool in [Some(Pool::new(2)), None] {
            for (rows, cols, chunk, run) in
                [(32usize, 16usize, 4usize, 32usize), (7, 3, 2, 3), (1, 5, 1, 8), (9, 1, 3, 1)]
            {
                let mut out = vec![0usize; rows * cols * chunk];
                let fill = |out: &mut [usize]| {
                    for_each_column_mut(out, chunk, rows, run, &|col, range, column| {
                        assert!(range.len() <= run && range.start % run == 0);
                        for r in range {
                            for (i, o) in column.row(r).iter_mut().enumerate() {
                                *o += (r * cols + col) * chunk + i + 1;
                            }
                        }
                    })
                };
                match &pool {
                    Some(p) => p.install(|| fill(&mut out)),
                    None => fill(&mut out),
                }
                assert!(out.iter().enumerate().all(|(i, &v)| v == i + 1), "{rows}x{cols} run {run}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "not in this job's rows")]
    fn a_column_hands_out_only_its_own_rows() {
        let mut out = vec![0u8; 8];
        for_each_column_mut(&mut out, 1, 4, 2, &|_, range, column| {
            column.row((range.start + 2) % 4);
        });
    }

    #[test]
    fn chunks_cover_the_slice_once() {
        for pool in [Some(Pool::new(2)), None] {
            for (len, chunk) in [(1000usize, 100usize), (1001, 100), (5, 7), (0, 3)] {
                let mut out = vec![0usize; len];
                let fill = |out: &mut [usize]| {
                    for_each_chunk_mut(out, chunk, &|b, c| {
                        for (i, o) in c.iter_mut().enumerate() {
                            *o += b * chunk + i + 1;
                        }
                    })
                };
                match &pool {
                    Some(p) => p.install(|| fill(&mut out)),
                    None => fill(&mut out),
                }
                assert!(out.iter().enumerate().all(|(i, &v)| v == i + 1), "len {len} chunk {chunk}");
            }
        }
    }
}
