internal import Synchronization

/// The droplet each reserved IP was on when last read, so that `GET /v2/reserved_ips/{ip}` can ask Harpoon for that
/// droplet while the orchestrator is still answering for the IP, instead of after.
///
/// Only a guess of *which* droplet to fetch: both answers come from this request, and the droplet fetched ahead is
/// used only when the orchestrator confirms the IP is on it; otherwise it is fetched again. So answers are never
/// stale, and an IP whose assignment is stable (the common case) costs one round trip instead of two.
///
/// Bounded: past `capacity` IPs the memo starts again empty.
final class DropletGuesses: Sendable {
    private struct Key: Hashable {
        var customer: String
        var ip: String
    }

    private let guesses = Mutex<[Key: Int64]>([:])
    let capacity: Int

    init(capacity: Int = 50_000) {
        self.capacity = capacity
    }

    /// The droplet `ip` was last seen on for `customer`, if any.
    func guess(ip: String, customer: String) -> Int64? {
        guesses.withLock { $0[Key(customer: customer, ip: ip)] }
    }

    /// Records where `ip` is now (`0`: on no droplet).
    func record(ip: String, customer: String, dropletId: Int64) {
        let key = Key(customer: customer, ip: ip)
        guesses.withLock { guesses in
            if dropletId == 0 {
                guesses[key] = nil
                return
            }
            if guesses[key] == nil, guesses.count >= capacity { guesses.removeAll(keepingCapacity: true) }
            guesses[key] = dropletId
        }
    }
}
