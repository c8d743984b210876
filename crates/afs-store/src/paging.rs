//! Streams of records read in pages, for backends that read a query's result a page at a
//! time (keyset pagination, so memory stays bounded and no transaction is held open between
//! pages). A backend reads one page ([`PageSource`]); [`Pages`] sizes the pages, keeps the
//! filter's limit and yields the records.

use std::collections::VecDeque;

use crate::{Paging, Result, UsageRecord};

/// Rows of the first page of a [`Paging::Growing`] stream: small, so that the first record
/// arrives quickly. Each later page asks for four times as many, up to [`MAX_PAGE`].
pub const FIRST_PAGE: u64 = 64;
/// Rows of the largest page, and of every page of a [`Paging::Bulk`] stream.
pub const MAX_PAGE: u64 = 2048;

/// Where a stream's pages come from: a backend's query, continued after the last record it
/// returned.
pub trait PageSource {
    /// Appends the next page, of about `want` records, to `into`: at most `want`, or more
    /// where the backend cannot end a page inside a run of records (it must then return all
    /// of the run). Returns whether there is nothing after this page.
    fn read_page(&mut self, want: u64, into: &mut VecDeque<UsageRecord>) -> Result<bool>;
}

/// The records of a [`PageSource`] under a filter's paging and limit.
pub struct Pages<S> {
    /// Where pages come from.
    source: S,
    /// Records read and not yet returned.
    buffer: VecDeque<UsageRecord>,
    /// Rows the next page asks for.
    page_size: u64,
    /// Records still to return under the filter's limit.
    remaining: Option<u64>,
    /// Whether the last page has been read.
    exhausted: bool,
}

impl<S: PageSource> Pages<S> {
    /// The records `source` reads, in pages as `paging` says, at most `limit` of them (a
    /// filter's [`paging`](crate::RecordFilter::paging) and [`limit`](crate::RecordFilter::limit)).
    pub fn new(source: S, paging: Paging, limit: Option<u64>) -> Self {
        let page_size = match paging {
            Paging::Growing => FIRST_PAGE,
            Paging::Bulk => MAX_PAGE,
        };
        Pages {
            source,
            buffer: VecDeque::new(),
            page_size,
            remaining: limit,
            exhausted: false,
        }
    }

    /// Reads the next page into the buffer.
    fn fetch_page(&mut self) -> Result<()> {
        let last_page = self.remaining.is_some_and(|left| left <= self.page_size);
        let want = match self.remaining {
            Some(left) => left.min(self.page_size),
            None => self.page_size,
        };
        let at_end = self.source.read_page(want, &mut self.buffer)?;
        if at_end || last_page {
            self.exhausted = true;
        }
        self.page_size = (self.page_size * 4).min(MAX_PAGE);
        Ok(())
    }
}

impl<S: PageSource> Iterator for Pages<S> {
    type Item = Result<UsageRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == Some(0) {
            return None;
        }
        if self.buffer.is_empty() && !self.exhausted {
            if let Err(e) = self.fetch_page() {
                self.exhausted = true;
                return Some(Err(e));
            }
        }
        let record = self.buffer.pop_front()?;
        if let Some(left) = self.remaining.as_mut() {
            *left -= 1;
        }
        Some(Ok(record))
    }
}
