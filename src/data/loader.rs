//! [`DataLoader`]: batches of a [`Dataset`], prepared on a background thread.

use super::{Collate, Dataset};
use crate::error::{Error, Result};
use crate::random::Generator;
use std::sync::mpsc::{self, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

/// Batches of a dataset, one epoch per iteration (`torch.utils.data.DataLoader` with one
/// worker).
///
/// Each epoch ([`DataLoader::iter`], or `for batch in &mut loader`) starts a thread that reads
/// the samples of the next batches, stacks them ([`Collate`]) and hands them over a channel of
/// bounded capacity ([`DataLoader::prefetch`], 2 batches by default): preparing batch k+1
/// overlaps the training step on batch k, and memory stays bounded however slow the consumer.
///
/// Shuffling is seeded ([`DataLoader::shuffle`]): the loader owns a [`Generator`] and draws a
/// fresh permutation from it at the start of every epoch, so epochs differ from each other but
/// the whole sequence of epochs is the same on every run with the same seed.
pub struct DataLoader<D: Dataset> {
    dataset: Arc<D>,
    batch_size: usize,
    drop_last: bool,
    generator: Option<Generator>,
    prefetch: usize,
}

impl<D> DataLoader<D>
where
    D: Dataset + 'static,
    D::Sample: Collate,
    <D::Sample as Collate>::Batch: Send + 'static,
{
    /// Batches of `batch_size` samples in dataset order, the last one possibly smaller.
    /// A batch size of 0 is an error.
    pub fn new(dataset: D, batch_size: usize) -> Result<DataLoader<D>> {
        DataLoader::from_arc(Arc::new(dataset), batch_size)
    }

    /// Like [`DataLoader::new`] for a dataset shared with other code (e.g. two loaders over one
    /// dataset).
    pub fn from_arc(dataset: Arc<D>, batch_size: usize) -> Result<DataLoader<D>> {
        if batch_size == 0 {
            return Err(Error::Data {
                path: "DataLoader".to_string(),
                msg: "batch size must be at least 1".to_string(),
            });
        }
        Ok(DataLoader {
            dataset,
            batch_size,
            drop_last: false,
            generator: None,
            prefetch: 2,
        })
    }

    /// Shuffles every epoch with a permutation drawn from `Generator::new(seed)`.
    pub fn shuffle(self, seed: u64) -> DataLoader<D> {
        self.shuffle_with(Generator::new(seed))
    }

    /// Shuffles every epoch with permutations drawn from `generator` (which the loader keeps
    /// and advances).
    pub fn shuffle_with(mut self, generator: Generator) -> DataLoader<D> {
        self.generator = Some(generator);
        self
    }

    /// Drops the last batch of an epoch when it would be smaller than the batch size (useful
    /// when a model or a compiled step wants one batch shape).
    pub fn drop_last(mut self, drop_last: bool) -> DataLoader<D> {
        self.drop_last = drop_last;
        self
    }

    /// How many batches the background thread may prepare ahead of the consumer (the channel's
    /// capacity; 0 hands each batch over only when it is asked for).
    pub fn prefetch(mut self, batches: usize) -> DataLoader<D> {
        self.prefetch = batches;
        self
    }

    pub fn dataset(&self) -> &Arc<D> {
        &self.dataset
    }

    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// The number of batches in one epoch.
    pub fn len(&self) -> usize {
        let n = self.dataset.len();
        if self.drop_last {
            n / self.batch_size
        } else {
            n.div_ceil(self.batch_size)
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sample order of the next epoch (advancing the shuffling generator).
    fn next_order(&mut self) -> Vec<usize> {
        let n = self.dataset.len();
        let mut order: Vec<usize> = (0..n).collect();
        if let Some(g) = self.generator.as_mut() {
            // Fisher–Yates with unbiased draws: every permutation equally likely.
            for i in (1..n).rev() {
                let j = g.below(i as u64 + 1) as usize;
                order.swap(i, j);
            }
        }
        order
    }

    /// One epoch: an iterator over its batches, each a `Result` (a sample that cannot be read
    /// or batched ends the epoch with its error).
    pub fn iter(&mut self) -> Batches<<D::Sample as Collate>::Batch> {
        let order = self.next_order();
        let batch_size = self.batch_size;
        let count = self.len();
        let dataset = Arc::clone(&self.dataset);
        let (tx, rx) = mpsc::sync_channel(self.prefetch);
        let worker = std::thread::Builder::new()
            .name("kiln-data-loader".to_string())
            .spawn(move || {
                for chunk in order.chunks(batch_size).take(count) {
                    let batch = chunk
                        .iter()
                        .map(|&i| dataset.get(i))
                        .collect::<Result<Vec<_>>>()
                        .and_then(Collate::collate);
                    let failed = batch.is_err();
                    // A send fails when the consumer dropped the iterator: stop early.
                    if tx.send(batch).is_err() || failed {
                        return;
                    }
                }
            });
        match worker {
            Ok(handle) => Batches {
                rx: Some(rx),
                worker: Some(handle),
                remaining: count,
                startup: None,
            },
            Err(e) => Batches {
                rx: None,
                worker: None,
                remaining: 0,
                startup: Some(Error::Data {
                    path: "DataLoader".to_string(),
                    msg: format!("cannot start the loader thread: {e}"),
                }),
            },
        }
    }
}

impl<D> IntoIterator for &mut DataLoader<D>
where
    D: Dataset + 'static,
    D::Sample: Collate,
    <D::Sample as Collate>::Batch: Send + 'static,
{
    type Item = Result<<D::Sample as Collate>::Batch>;
    type IntoIter = Batches<<D::Sample as Collate>::Batch>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// The batches of one epoch, received from the loader's thread.
///
/// Dropping it early (a `break` out of the loop) stops the thread: its next hand-over fails
/// and it returns, and the drop waits for it, so no thread outlives the epoch.
pub struct Batches<B> {
    rx: Option<Receiver<Result<B>>>,
    worker: Option<JoinHandle<()>>,
    remaining: usize,
    startup: Option<Error>,
}

impl<B> Batches<B> {
    /// Ends the epoch: closes the channel (unblocking the thread) and joins the thread. A
    /// panic on the thread (in a dataset's `get`, say) is returned as an error.
    fn finish(&mut self) -> Option<Error> {
        self.remaining = 0;
        self.rx = None;
        let handle = self.worker.take()?;
        match handle.join() {
            Ok(()) => None,
            Err(payload) => {
                let why = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_string());
                Some(Error::Data {
                    path: "DataLoader".to_string(),
                    msg: format!("the loader thread panicked: {why}"),
                })
            }
        }
    }
}

impl<B> Iterator for Batches<B> {
    type Item = Result<B>;

    fn next(&mut self) -> Option<Result<B>> {
        if let Some(e) = self.startup.take() {
            return Some(Err(e));
        }
        if self.remaining == 0 {
            return self.finish().map(Err);
        }
        let received = self.rx.as_ref().map(|rx| rx.recv());
        match received {
            Some(Ok(Ok(batch))) => {
                self.remaining -= 1;
                Some(Ok(batch))
            }
            Some(Ok(Err(e))) => {
                self.finish();
                Some(Err(e))
            }
            // The thread hung up before sending every batch: it panicked.
            Some(Err(_)) | None => Some(Err(self.finish().unwrap_or_else(|| Error::Data {
                path: "DataLoader".to_string(),
                msg: "the loader thread stopped before the end of the epoch".to_string(),
            }))),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (
            0,
            Some(self.remaining + usize::from(self.startup.is_some())),
        )
    }
}

impl<B> Drop for Batches<B> {
    fn drop(&mut self) {
        self.finish();
    }
}
