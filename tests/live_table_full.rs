//! A live-block table too small for the program: the blocks that find no
//! room are counted as untracked and left out of their callsite's live
//! figures, so freeing them does not leave a phantom leak behind.

use std::hint::black_box;

use heapwatch::{Sampling, Tracker};

mod common;

/// The smallest table heapwatch maps (1,024 slots, 64 stripes).
#[global_allocator]
static GLOBAL: Tracker<std::alloc::System> = Tracker::new(std::alloc::System)
    .with_sampling(Sampling::All)
    .with_max_live_samples(1024);

const BOXES: usize = 5_000;

/// 5,000 live 40-byte blocks: more than the table holds.
#[allow(clippy::vec_box)]
#[inline(never)]
fn burst(out: &mut Vec<Box<[u8; 40]>>) {
    for _ in 0..BOXES {
        out.push(black_box(Box::new([7u8; 40])));
    }
}

fn burst_site(snap: &heapwatch::Snapshot) -> heapwatch::Callsite {
    let sites: Vec<_> = common::callsites_at(snap, "burst")
        .filter(|c| c.allocated_bytes % 40 == 0 && c.allocations % BOXES as u64 == 0)
        .collect();
    assert_eq!(sites.len(), 1, "one callsite for the boxes: {sites:#?}");
    sites[0].clone()
}

#[test]
fn blocks_the_table_cannot_hold_do_not_stay_live_at_their_callsite() {
    let mut boxes = Vec::with_capacity(BOXES);
    let first = heapwatch::snapshot();
    for round in 1..=3u64 {
        burst(&mut boxes);
        let held = heapwatch::snapshot();
        let site = burst_site(&held);
        assert_eq!(site.allocations, round * BOXES as u64, "{site:#?}");
        assert!(
            held.unattributed.dropped_live_table_full > 0,
            "the table overflowed: {:?}",
            held.unattributed
        );
        // Held: what the table could track, never more than was allocated.
        assert!(
            site.live_blocks > 0 && site.live_blocks < BOXES as u64,
            "{site:#?}"
        );
        assert_eq!(site.live_bytes, site.live_blocks * 40, "{site:#?}");

        boxes.clear();
        let freed = heapwatch::snapshot();
        let site = burst_site(&freed);
        assert_eq!(
            (site.live_blocks, site.live_bytes),
            (0, 0),
            "round {round}: every box was freed, yet the callsite reads live: {site:#?}"
        );
        // A diff over the rounds finds no growth at the callsite.
        let diff = freed.diff(&first);
        let grown: Vec<_> = diff
            .callsites
            .iter()
            .filter(|c| {
                c.frames
                    .first()
                    .is_some_and(|f| f.function.ends_with("burst"))
            })
            .filter(|c| c.live_bytes_delta != 0)
            .collect();
        assert!(grown.is_empty(), "round {round}: {grown:#?}");
    }
}
