// Included by the heapwatch workers: what the driver reads after a run
// (heapwatch's own memory for the tracker-memory column, and the totals).

fn print_hw_stats() {
    let s = heapwatch::stats();
    println!("overhead_bytes={}", s.overhead_bytes);
    println!("allocations={}", s.allocations);
    println!("allocated_bytes={}", s.allocated_bytes);
}
