//! The fast-path socket's preallocated batches: [`RecvBatch`] (receive buffers, their
//! source addresses and control buffers, and the *logical* datagrams of the last receive:
//! one per datagram the sender sent, splitting GRO-coalesced buffers) and [`SendBatch`]
//! (which received datagrams go to which address, grouped into plain messages or GSO runs).
//!
//! Owns the buffer layouts and the grouping rules; see `socket` for the syscalls that fill
//! and drain them and for the GRO/GSO rules. Nothing here allocates after `new`.

use std::net::{Ipv4Addr, SocketAddr};

use super::cmsg::{
    clear_control, set_segment_size, sockaddr_to_std, std_to_sockaddr, zeroed_vec, Ctrl,
};

/// Largest UDP payload over IPv4; no GSO send is larger.
pub(super) const MAX_UDP_PAYLOAD: usize = 65_507;
/// One GRO receive slot: room for any coalesced buffer (a UDP payload is below 64 KiB).
pub(super) const GRO_SLOT: usize = 1 << 16;
/// Most GRO slots (messages) per receive batch: 64 x 64 KiB = 4 MiB of address space.
pub(super) const GRO_SLOTS_MAX: usize = 64;
/// Most segments per GSO send (the kernel's `UDP_MAX_SEGMENTS` is 64 on older kernels).
pub(super) const GSO_MAX_SEGMENTS: usize = 64;
/// Largest segment sent with GSO: 1500 - 40 (IPv6) - 8 (UDP), so it fits a common path MTU.
pub(super) const GSO_MAX_SEGMENT: usize = 1452;

/// Preallocated receive buffers for one `recvmmsg`, and the logical datagrams of the last
/// receive (segments of coalesced buffers under GRO). Follows one socket.
pub struct RecvBatch {
    /// `max(batch * slot, gro_slots * 64 KiB)` bytes: the fallback and the GRO layout share it.
    pub(super) bufs: Vec<u8>,
    /// Fallback slot size, and the longest datagram presented (longer ones read as empty).
    pub(super) slot: usize,
    /// Logical datagrams per call, and messages per call in the fallback layout.
    pub(super) batch: usize,
    /// Messages per call in the GRO layout.
    pub(super) gro_slots: usize,
    // Per message (`batch` entries).
    pub(super) addrs: Vec<libc::sockaddr_storage>,
    pub(super) iovs: Vec<libc::iovec>,
    pub(super) hdrs: Vec<libc::mmsghdr>,
    pub(super) ctrl: Vec<Ctrl>,
    /// Bytes received in message m (0 when truncated).
    pub(super) msg_len: Vec<usize>,
    /// GRO segment size of message m (0: one datagram).
    pub(super) msg_seg: Vec<usize>,
    /// Messages of the last syscall, their slot stride, and the first not fully presented.
    pub(super) msgs: usize,
    pub(super) stride: usize,
    pub(super) next_msg: usize,
    pub(super) next_off: usize,
    // Per logical datagram (`batch` entries): where it is and which message it came from.
    pub(super) offs: Vec<usize>,
    pub(super) lens: Vec<usize>,
    pub(super) srcs: Vec<usize>,
    pub(super) n: usize,
}

impl RecvBatch {
    /// Up to `batch` datagrams per call, each up to `slot` bytes (larger ones read as empty).
    pub fn new(batch: usize, slot: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        let slot = slot.clamp(1, GRO_SLOT);
        let gro_slots = batch.clamp(1, GRO_SLOTS_MAX);
        Self {
            // Zeroed (calloc): untouched pages of the layout not in use cost no memory.
            bufs: vec![0u8; (batch * slot).max(gro_slots * GRO_SLOT)],
            slot,
            batch,
            gro_slots,
            addrs: zeroed_vec(batch),
            iovs: zeroed_vec(batch),
            hdrs: zeroed_vec(batch),
            ctrl: vec![[0u64; 8]; batch],
            msg_len: vec![0; batch],
            msg_seg: vec![0; batch],
            msgs: 0,
            stride: slot,
            next_msg: 0,
            next_off: 0,
            offs: vec![0; batch],
            lens: vec![0; batch],
            srcs: vec![0; batch],
            n: 0,
        }
    }

    /// Logical datagrams in the last receive.
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// True when the last receive left datagrams for the next call (GRO segments beyond
    /// `batch`): the next receive returns them without a syscall.
    pub fn has_pending(&self) -> bool {
        self.next_msg < self.msgs
    }

    /// Messages the kernel returned in the last `recvmmsg` (fewer than the datagrams they
    /// hold when GRO coalesced some).
    pub fn messages(&self) -> usize {
        self.msgs
    }

    /// The `i`th logical datagram of the last receive and its source (`None` for a non-IP
    /// source).
    #[inline]
    pub fn get(&self, i: usize) -> (&[u8], Option<SocketAddr>) {
        (self.data(i), sockaddr_to_std(&self.addrs[self.srcs[i]]))
    }

    #[inline]
    pub(super) fn data(&self, i: usize) -> &[u8] {
        let off = self.offs[i];
        &self.bufs[off..off + self.lens[i]]
    }

    /// Presents up to `batch` logical datagrams from the received messages, resuming where the
    /// previous call stopped.
    pub(super) fn present(&mut self) {
        self.n = 0;
        while self.next_msg < self.msgs && self.n < self.batch {
            let m = self.next_msg;
            let base = m * self.stride;
            let len = self.msg_len[m];
            if len == 0 {
                self.push_logical(base, 0, m);
                self.next_msg += 1;
                continue;
            }
            let seg = match self.msg_seg[m] {
                0 => len,
                s => s,
            };
            while self.next_off < len && self.n < self.batch {
                let l = seg.min(len - self.next_off);
                let l = if l > self.slot { 0 } else { l };
                self.push_logical(base + self.next_off, l, m);
                self.next_off += seg;
            }
            if self.next_off >= len {
                self.next_msg += 1;
                self.next_off = 0;
            }
        }
    }

    #[inline]
    fn push_logical(&mut self, off: usize, len: usize, msg: usize) {
        self.offs[self.n] = off;
        self.lens[self.n] = len;
        self.srcs[self.n] = msg;
        self.n += 1;
    }
}

/// Preallocated send descriptors for one `sendmmsg`: which received datagrams go where, and
/// the messages (plain or GSO runs) they are grouped into.
pub struct SendBatch {
    // Per queued datagram.
    pub(super) addrs: Vec<libc::sockaddr_storage>,
    pub(super) addr_lens: Vec<libc::socklen_t>,
    pub(super) dests: Vec<SocketAddr>,
    pub(super) slots: Vec<usize>,
    pub(super) iovs: Vec<libc::iovec>,
    // Per message.
    pub(super) hdrs: Vec<libc::mmsghdr>,
    pub(super) ctrl: Vec<Ctrl>,
    pub(super) first: Vec<usize>,
    pub(super) count: Vec<usize>,
    pub(super) n: usize,
    pub(super) last_messages: usize,
}

impl SendBatch {
    pub fn new(batch: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        let unspecified = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
        Self {
            addrs: zeroed_vec(batch),
            addr_lens: vec![0; batch],
            dests: vec![unspecified; batch],
            slots: vec![0; batch],
            iovs: zeroed_vec(batch),
            hdrs: zeroed_vec(batch),
            ctrl: vec![[0u64; 8]; batch],
            first: vec![0; batch],
            count: vec![0; batch],
            n: 0,
            last_messages: 0,
        }
    }

    pub fn clear(&mut self) {
        self.n = 0;
    }

    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Messages the last [`FastPathSocket::send_batch`] built (fewer than the datagrams when
    /// GSO grouped runs; counts the final grouping if GSO fell back mid-batch).
    pub fn last_messages(&self) -> usize {
        self.last_messages
    }

    /// Queues logical datagram `slot` of the last receive to `to`; false when the batch is
    /// full.
    #[inline]
    pub fn push(&mut self, slot: usize, to: SocketAddr) -> bool {
        if self.n == self.slots.len() {
            return false;
        }
        self.slots[self.n] = slot;
        self.dests[self.n] = to;
        self.addr_lens[self.n] = std_to_sockaddr(to, &mut self.addrs[self.n]);
        self.n += 1;
        true
    }

    /// Groups queued datagrams `from..n` into messages starting at message `msg`, GSO runs
    /// when `gso`; returns the total message count. `iovs` must be filled.
    pub(super) fn build(&mut self, mut msg: usize, from: usize, gso: bool) -> usize {
        let n = self.n;
        let mut i = from;
        while i < n {
            let len = self.iovs[i].iov_len;
            let mut j = i + 1;
            if gso && len > 0 && len <= GSO_MAX_SEGMENT {
                let mut total = len;
                while j < n && j - i < GSO_MAX_SEGMENTS && self.dests[j] == self.dests[i] {
                    let l = self.iovs[j].iov_len;
                    if l == 0 || l > len || total + l > MAX_UDP_PAYLOAD {
                        break;
                    }
                    total += l;
                    j += 1;
                    if l < len {
                        break; // a shorter datagram ends the run
                    }
                }
            }
            let h = &mut self.hdrs[msg].msg_hdr;
            h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = self.addr_lens[i];
            h.msg_iov = &mut self.iovs[i];
            h.msg_iovlen = (j - i) as _;
            h.msg_flags = 0;
            if j - i > 1 {
                set_segment_size(h, &mut self.ctrl[msg], len as u16);
            } else {
                clear_control(h);
            }
            self.hdrs[msg].msg_len = 0;
            self.first[msg] = i;
            self.count[msg] = j - i;
            msg += 1;
            i = j;
        }
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn present_splits_segments_and_carries_over() {
        // Two messages as the kernel would leave them: 10 x 200 + 50 coalesced, then 30 alone.
        let mut rx = RecvBatch::new(4, 2048);
        rx.stride = GRO_SLOT;
        rx.msgs = 2;
        rx.msg_len[0] = 2050;
        rx.msg_seg[0] = 200;
        rx.msg_len[1] = 30;
        rx.msg_seg[1] = 0;
        let mut seen = Vec::new();
        while rx.next_msg < rx.msgs {
            rx.present();
            assert!(rx.len() <= 4);
            for i in 0..rx.len() {
                seen.push((rx.offs[i], rx.lens[i], rx.srcs[i]));
            }
        }
        let mut want: Vec<_> = (0..10).map(|k| (k * 200, 200, 0)).collect();
        want.push((2000, 50, 0));
        want.push((GRO_SLOT, 30, 1));
        assert_eq!(seen, want);
        // Segments longer than the slot read as empty; a cut message as one empty datagram.
        let mut rx = RecvBatch::new(8, 100);
        rx.stride = GRO_SLOT;
        rx.msgs = 2;
        (rx.msg_len[0], rx.msg_seg[0]) = (250, 120);
        (rx.msg_len[1], rx.msg_seg[1]) = (0, 0);
        rx.present();
        let lens: Vec<_> = (0..rx.len()).map(|i| rx.lens[i]).collect();
        assert_eq!(lens, vec![0, 0, 10, 0]);
    }
}
