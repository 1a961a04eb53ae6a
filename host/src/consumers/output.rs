//! What a connection still has to send ([`Output`]): small control frames (HELLO reply,
//! SUBSCRIBED, COMMITTED, REJECT) in a fixed buffer, and at most one DATA frame in
//! progress, as three parts: its 48-byte head (`send` with `MSG_MORE`), its records
//! (`sendfile` from the segment file, never copied into user space) and its 4-byte trailer.
//! A full socket stops the sending where it is; the next `EPOLLOUT` resumes it there.
//! A DATA frame's parts are never interleaved with a control frame's.

use std::fs::File;
use std::io;
use std::os::fd::RawFd;

use pinstream_core::wire::{DATA_HEAD_LEN, TRAILER_LEN};

use crate::sys::consumer_io;

/// Bytes of control frames a connection may have waiting; input is not read while more
/// than half of it is taken (each consumer frame is answered by at most one frame no
/// larger than the one it answers, so one read of up to half of it always fits).
pub const CTL_CAP: usize = 8192;

/// A DATA frame being sent.
#[derive(Clone, Copy, Debug)]
pub struct DataSend {
    head: [u8; DATA_HEAD_LEN],
    head_done: usize,
    /// The records' byte range in the segment file still to send.
    file_pos: u64,
    file_end: u64,
    trailer: [u8; TRAILER_LEN],
    trailer_done: usize,
}

impl DataSend {
    /// A frame of `head`, the segment's bytes `from..to`, and `trailer`.
    pub fn new(head: [u8; DATA_HEAD_LEN], from: u64, to: u64, trailer: [u8; TRAILER_LEN]) -> Self {
        Self {
            head,
            head_done: 0,
            file_pos: from,
            file_end: to,
            trailer,
            trailer_done: 0,
        }
    }
}

/// How far [`Output::flush`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is out.
    All,
    /// The socket is full: wait for `EPOLLOUT`.
    Blocked,
}

/// A connection's pending output.
#[derive(Debug)]
pub struct Output {
    ctl: Box<[u8; CTL_CAP]>,
    ctl_len: usize,
    ctl_done: usize,
    /// The DATA frame in progress.
    pub data: Option<DataSend>,
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl Output {
    /// Nothing pending.
    pub fn new() -> Self {
        Self {
            ctl: Box::new([0; CTL_CAP]),
            ctl_len: 0,
            ctl_done: 0,
            data: None,
        }
    }

    /// Control bytes waiting.
    pub fn ctl_pending(&self) -> usize {
        self.ctl_len - self.ctl_done
    }

    /// Nothing waiting at all.
    pub fn is_empty(&self) -> bool {
        self.data.is_none() && self.ctl_pending() == 0
    }

    /// Room to encode a control frame into: the free end of the buffer (after compacting).
    pub fn ctl_room(&mut self) -> &mut [u8] {
        if self.ctl_done > 0 {
            self.ctl.copy_within(self.ctl_done..self.ctl_len, 0);
            self.ctl_len -= self.ctl_done;
            self.ctl_done = 0;
        }
        &mut self.ctl[self.ctl_len..]
    }

    /// Takes `n` bytes written into [`ctl_room`](Self::ctl_room) as a frame to send.
    pub fn ctl_commit(&mut self, n: usize) {
        debug_assert!(self.ctl_len + n <= CTL_CAP);
        self.ctl_len += n;
    }

    /// Sends what it can: the DATA frame in progress first (its records from `file`), then
    /// the control frames.
    ///
    /// # Errors
    /// The socket's error (the connection is then closed); `UnexpectedEof` when the file is
    /// shorter than the frame says (it was truncated under the server).
    pub fn flush(&mut self, sock: RawFd, file: Option<&File>) -> io::Result<Flushed> {
        if let Some(d) = self.data.as_mut() {
            while d.head_done < DATA_HEAD_LEN {
                match consumer_io::send(sock, &d.head[d.head_done..], true) {
                    Ok(n) => d.head_done += n,
                    Err(e) if would_block(&e) => return Ok(Flushed::Blocked),
                    Err(e) => return Err(e),
                }
            }
            while d.file_pos < d.file_end {
                let file = file.ok_or_else(|| io::Error::other("no segment open"))?;
                let left = usize::try_from(d.file_end - d.file_pos).unwrap_or(usize::MAX);
                match consumer_io::sendfile(sock, file, &mut d.file_pos, left) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(_) => {}
                    Err(e) if would_block(&e) => return Ok(Flushed::Blocked),
                    Err(e) => return Err(e),
                }
            }
            while d.trailer_done < TRAILER_LEN {
                match consumer_io::send(sock, &d.trailer[d.trailer_done..], false) {
                    Ok(n) => d.trailer_done += n,
                    Err(e) if would_block(&e) => return Ok(Flushed::Blocked),
                    Err(e) => return Err(e),
                }
            }
            self.data = None;
        }
        while self.ctl_done < self.ctl_len {
            match consumer_io::send(sock, &self.ctl[self.ctl_done..self.ctl_len], false) {
                Ok(n) => self.ctl_done += n,
                Err(e) if would_block(&e) => return Ok(Flushed::Blocked),
                Err(e) => return Err(e),
            }
        }
        self.ctl_len = 0;
        self.ctl_done = 0;
        Ok(Flushed::All)
    }
}

impl Default for Output {
    fn default() -> Self {
        Self::new()
    }
}
