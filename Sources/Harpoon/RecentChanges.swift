internal import HarpoonAPI
internal import Synchronization

/// The latest event changes, as committed, in cursor order: a WatchEvents stream that keeps up reads them here
/// instead of querying the table after every commit.
///
/// The writer stages each change of a transaction (``stage(_:)``) and publishes them when it commits, or drops them
/// when it rolls back (``transactionEnded(committed:)``): what is here is always every committed change after
/// ``floor``, nothing more. The oldest changes make room for new ones; a subscriber that fell behind the floor reads
/// the table.
final class RecentChanges: Sendable {
    private struct State {
        /// Every committed change with a cursor above this one is in `changes`.
        var floor: Int64
        /// Ring buffer in cursor order, `start` the oldest.
        var changes: [Harpoon_V1_Event] = []
        var start = 0
        /// Event id → the cursor of its latest change here: an event is reported once, in its latest state, at that
        /// cursor (as the table has it).
        var latest: [Int64: Int64] = [:]
        /// The open transaction's changes.
        var staged: [Harpoon_V1_Event] = []
        /// How many were staged when the open write's savepoint began.
        var mark = 0

        /// The change at logical position `index` (0 the oldest).
        func change(_ index: Int) -> Harpoon_V1_Event { changes[(start + index) % changes.count] }
    }

    private let state: Mutex<State>
    let capacity: Int

    /// - Parameter floor: the highest cursor the table held when the store opened.
    init(floor: Int64, capacity: Int = 16_384) {
        state = Mutex(State(floor: floor))
        self.capacity = max(1, capacity)
    }

    /// A change made in the open transaction.
    func stage(_ event: Harpoon_V1_Event) {
        state.withLock { $0.staged.append(event) }
    }

    /// A write's savepoint began (`rolledBack` false), or was rolled back: what it staged is dropped.
    func savepoint(rolledBack: Bool) {
        state.withLock { state in
            if rolledBack {
                state.staged.removeLast(max(0, state.staged.count - state.mark))
            } else {
                state.mark = state.staged.count
            }
        }
    }

    func transactionEnded(committed: Bool) {
        state.withLock { state in
            defer {
                state.staged.removeAll(keepingCapacity: true)
                state.mark = 0
            }
            guard committed else { return }
            for event in state.staged {
                if state.changes.count < capacity {
                    state.changes.append(event)
                } else {
                    // Full: the oldest goes, and the floor moves up to it.
                    let oldest = state.changes[state.start]
                    if state.latest[oldest.id] == oldest.cursor { state.latest[oldest.id] = nil }
                    state.floor = oldest.cursor
                    state.changes[state.start] = event
                    state.start = (state.start + 1) % capacity
                }
                state.latest[event.id] = event.cursor
            }
        }
    }

    /// Changes after `cursor`, oldest first, each event once in its latest state; `nil` if `cursor` is below the floor
    /// (some of what follows it is no longer here).
    func changes(after cursor: Int64, customer: String?, limit: Int) -> [Harpoon_V1_Event]? {
        state.withLock { state -> [Harpoon_V1_Event]? in
            guard cursor >= state.floor else { return nil }
            // The first change after `cursor`: cursors increase along the ring.
            var low = 0
            var high = state.changes.count
            while low < high {
                let middle = (low + high) / 2
                if state.change(middle).cursor <= cursor { low = middle + 1 } else { high = middle }
            }
            var result: [Harpoon_V1_Event] = []
            var index = low
            while index < state.changes.count, result.count < limit {
                let event = state.change(index)
                index += 1
                guard state.latest[event.id] == event.cursor else { continue }  // it changed again later
                if let customer, event.customer != customer { continue }
                result.append(event)
            }
            return result
        }
    }
}
