import Foundation
import HarpoonAPI
import PostgresNIO
import PostgresSupport
import Synchronization
import TestSupport
import Testing

@testable import Harpoon

/// Several Harpoon replicas on one PostgreSQL database: what only several writers can get wrong.
@Suite("Harpoon replicas on one PostgreSQL database", .postgresServer)
struct PostgresReplicaTests {
    /// Opens `count` replicas of the store on a fresh database, runs `body`, closes them.
    private func withReplicas<T>(_ count: Int, _ body: ([PostgresHarpoonStore]) async throws -> T) async throws -> T {
        let address = try await freshPostgresDatabase()
        // Replicas that start together: the schema is migrated once (the others wait for it, then find it done).
        let replicas = try await withThrowingTaskGroup(of: PostgresHarpoonStore.self) { group in
            for _ in 0..<count { group.addTask { try await PostgresHarpoonStore.open(address) } }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        do {
            let result = try await body(replicas)
            for replica in replicas { await replica.close() }
            return result
        } catch {
            for replica in replicas { await replica.close() }
            throw error
        }
    }

    @Test("replicas writing at once: a watcher on either, resuming from any cursor it saw, never misses a change")
    func cursorsInCommitOrder() async throws {
        try await withReplicas(2) { replicas in
            let writersDone = Atomic(false)
            // Watchers read the change feed from either replica while the writes go on, each from a cursor a first
            // watcher saw; each checks afterwards that it saw every change below where it got to.
            let seen = Mutex<[Int64]>([0])
            let watch: @Sendable (Int) async throws -> (start: Int64, position: Int64, cursors: Set<Int64>) = { index in
                // Watchers start one after another, each from a cursor the first one has seen by then.
                for _ in 0..<index * 20 { await Task.yield() }
                let start = seen.withLock { $0[($0.count * 7 + index) % $0.count] }
                var cursor = start
                var cursors = Set<Int64>()
                var finalPass = false
                while true {
                    let batch = try await replicas[index % 2].changes(after: cursor, customer: nil, limit: 50)
                    for event in batch {
                        #expect(event.cursor > cursor, "cursors increase along the feed")
                        cursors.insert(event.cursor)
                        cursor = event.cursor
                    }
                    if index == 0 { seen.withLock { $0 += batch.map(\.cursor) } }
                    if batch.isEmpty {
                        if finalPass { return (start, cursor, cursors) }
                        // one more read after the last write
                        if writersDone.load(ordering: .acquiring) { finalPass = true }
                        await Task.yield()
                    }
                }
            }
            // Writers on both replicas: creations and updates meet in transactions that commit in any order.
            let write: @Sendable () async throws -> Void = {
                try await withThrowingTaskGroup(of: Void.self) { writers in
                    for writer in 0..<8 {
                        writers.addTask {
                            let store = replicas[writer % 2]
                            for round in 0..<25 {
                                let (_, event) = try await store.createDroplet(createRequest("w\(writer)-\(round)"))
                                if round % 3 == 0 {
                                    _ = try await replicas[(writer + 1) % 2].updateEvent(
                                        id: event.id, status: .placed, hypervisorId: "hv\(writer)", error: nil,
                                        ipv4Address: nil, then: nil
                                    )
                                }
                            }
                        }
                    }
                    try await writers.waitForAll()
                }
                writersDone.store(true, ordering: .releasing)
            }
            let (watchers, _) = try await withThrowingTaskGroup(of: (Int, (Int64, Int64, Set<Int64>))?.self) { group in
                for index in 0..<6 { group.addTask { (index, try await watch(index)) } }
                group.addTask {
                    try await write()
                    return nil
                }
                var results: [Int: (Int64, Int64, Set<Int64>)] = [:]
                for try await result in group { if let (index, value) = result { results[index] = value } }
                return (results, ())
            }
            // The table at the end: each event once, at its latest change.
            let final = try await replicas[0].changes(after: 0, customer: nil, limit: 100_000)
            #expect(final.count == 200)
            #expect(watchers.count == 6)
            for (index, (start, position, cursors)) in watchers {
                // Every change it had to see: those after where it started, up to where it got.
                let missed = final.filter { $0.cursor > start && $0.cursor <= position && !cursors.contains($0.cursor) }
                #expect(missed.map(\.cursor) == [], "watcher \(index) from \(start) passed these without seeing them")
                #expect(position == final.map(\.cursor).max(), "watcher \(index) caught up")
            }
        }
    }

    @Test("an outbox entry is one replica's at a time; a replica that stops has its entries taken over after the lease")
    func outboxClaims() async throws {
        try await withReplicas(2) { replicas in
            let (a, b) = (replicas[0], replicas[1])
            let created = try await a.createDropletQueued(createRequest("web-1"))
            let entry = try #require(created.entry)
            let now = Date().timeIntervalSince1970
            // The creator works on it from memory: the other replica does not see it due.
            #expect(try await b.dueOutbox(now: now, limit: 10).isEmpty)
            // The creator stops without settling it: after the lease it is due to the other, which claims it.
            let lapsed = now + b.outboxLease + 1
            let taken = try await b.dueOutbox(now: lapsed, limit: 10)
            #expect(taken.map(\.id) == [entry.id])
            #expect(try await a.dueOutbox(now: lapsed, limit: 10).isEmpty, "claimed by b: not a's as well")
            // Claims made at the same moment split the entries: each goes to one replica.
            for index in 0..<40 { _ = try await a.createDropletQueued(createRequest("d\(index)")) }
            let later = lapsed + b.outboxLease + 1
            let (left, right) = try await withThrowingTaskGroup(of: (Int, [OutboxEntry]).self) { group in
                for (index, replica) in [a, b].enumerated() {
                    group.addTask {
                        var claimed: [OutboxEntry] = []
                        while true {
                            let batch = try await replica.dueOutbox(now: later, limit: 3)
                            if batch.isEmpty { return (index, claimed) }
                            claimed += batch
                        }
                    }
                }
                var byReplica: [Int: [OutboxEntry]] = [:]
                for try await (index, claimed) in group { byReplica[index] = claimed }
                return (byReplica[0] ?? [], byReplica[1] ?? [])
            }
            #expect(left.count + right.count == 41)
            #expect(Set(left.map(\.id)).isDisjoint(with: Set(right.map(\.id))))
        }
    }

    @Test(
        "creations that meet in one transaction are written by one statement: each as if alone, one the server refuses fails alone"
    )
    func creationsTogether() async throws {
        try await withReplicas(1) { replicas in
            let store = replicas[0]
            // 60 at once, made to meet in one transaction: the replica's transaction before them waits for the lock
            // that orders cursors (held here), so they queue behind it. Six repeat one idempotency key, and one has a
            // name PostgreSQL refuses (text cannot hold NUL), which fails the set-based statement: the batch is rerun
            // one write at a time.
            let refused = 17
            let lock = PostgresWriter.cursorLock
            let outcomes = try await store.pool.client.withConnection { connection in
                try await connection.query("SELECT pg_advisory_lock(\(lock))", logger: store.pool.logger)
                let before = Task { try await store.createDropletQueued(createRequest("before")) }
                // Its transaction waits for the lock before the 60 are sent, so none of them joins it.
                #expect(
                    try await eventually {
                        var waiting = 0
                        for try await count in try await connection.query(
                            "SELECT count(*)::int8 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted",
                            logger: store.pool.logger
                        ).decode(Int64.self) {
                            waiting = Int(count)
                        }
                        return waiting == 1
                    })
                let outcomes = await withTaskGroup(of: (Int, Result<CreatedDroplet, any Error>).self) { group in
                    for n in 0..<60 {
                        group.addTask {
                            let request =
                                n % 10 == 0
                                ? createRequest("keyed", key: "shared-key")
                                : createRequest(n == refused ? "bad\u{0}name" : "web-\(n)", customer: "c\(n % 3)")
                            do { return (n, .success(try await store.createDropletQueued(request))) } catch {
                                return (n, .failure(error))
                            }
                        }
                    }
                    // All 60 wait for the next transaction; then the lock goes.
                    #expect(
                        await eventually { store.writer.waiting == 60 },
                        "the creations queue behind the held transaction")
                    _ = try? await connection.query("SELECT pg_advisory_unlock(\(lock))", logger: store.pool.logger)
                    return await group.reduce(into: [Int: Result<CreatedDroplet, any Error>]()) { $0[$1.0] = $1.1 }
                }
                _ = try await before.value
                return outcomes
            }
            #expect(outcomes.count == 60)
            #expect((try? outcomes[refused]?.get()) == nil, "the refused name is refused")
            let created = outcomes.compactMap { n, outcome in n == refused ? nil : try? outcome.get() }
            #expect(created.count == 59, "every other creation succeeds")
            let keyed = created.filter { $0.droplet.name == "keyed" }
            #expect(
                keyed.count == 6 && Set(keyed.map(\.droplet.id)).count == 1 && Set(keyed.map(\.event.id)).count == 1)
            // Each answer is what the database holds: the droplet, its event (with the droplet's id and a cursor) and
            // its outbox entry.
            for answer in created {
                let droplet = try await store.droplet(id: answer.droplet.id)
                #expect(droplet?.name == answer.droplet.name && droplet?.customer == answer.droplet.customer)
                let event = try await store.event(id: answer.event.id)
                #expect(event?.dropletId == answer.droplet.id && answer.event.dropletId == answer.droplet.id)
                #expect(event?.cursor == answer.event.cursor && answer.event.cursor > 0)
                if let entry = answer.entry { #expect(entry.eventId == answer.event.id) }
            }
            let distinct = Set(created.map(\.droplet.id))
            #expect(distinct.count == 54)
            #expect(Set(created.compactMap(\.entry?.id)).count == 54, "one entry per new droplet")
            #expect(try await store.outboxCount() == 55)  // and the one before them
            let feed = try await store.changes(after: 0, customer: nil, limit: 100)
            #expect(feed.count == 55 && Set(feed.map(\.cursor)).count == 55)
        }
    }

    @Test(
        "reports that meet in one transaction: one event's reports apply in order, one the server refuses fails alone")
    func reportsTogether() async throws {
        try await withReplicas(1) { replicas in
            let store = replicas[0]
            let first = try await store.createDropletQueued(createRequest("a"))
            let second = try await store.createDropletQueued(createRequest("b"))
            let third = try await store.createDropletQueued(createRequest("c"))
            // One call: its writes share a transaction (writeEach). The first event goes through three states in it.
            let results = await store.updateEvents([
                EventUpdate(id: first.event.id, status: .placed, hypervisorId: "hv1"),
                EventUpdate(id: second.event.id, status: .placed, hypervisorId: "hv2"),
                EventUpdate(id: first.event.id, status: .running),
                EventUpdate(id: third.event.id, status: .errored, error: "disk\u{0}full"),
                EventUpdate(id: first.event.id, status: .completed, ipv4Address: "10.0.0.9"),
                EventUpdate(id: second.event.id, status: .errored, error: "no room"),
            ])
            #expect(results.map { (try? $0.get())?.status } == [.placed, .placed, .running, nil, .completed, .errored])
            let done = try await store.droplet(id: first.droplet.id)
            #expect(done?.status == .active && done?.hypervisorId == "hv1" && done?.ipv4Address == "10.0.0.9")
            #expect(try await store.event(id: first.event.id)?.status == .completed)
            let failed = try await store.droplet(id: second.droplet.id)
            #expect(failed?.status == .errored && failed?.error == "no room")
            // The refused report changed nothing.
            #expect(try await store.event(id: third.event.id)?.status == .pending)
            #expect(try await store.droplet(id: third.droplet.id)?.status == .new)
        }
    }

    @Test("one idempotency key used on two replicas at once creates one droplet")
    func idempotencyAcrossReplicas() async throws {
        try await withReplicas(2) { replicas in
            for round in 0..<10 {
                let answers = try await withThrowingTaskGroup(of: CreatedDroplet.self) { group in
                    for replica in replicas {
                        group.addTask {
                            try await replica.createDropletQueued(createRequest("web-\(round)", key: "key-\(round)"))
                        }
                    }
                    return try await group.reduce(into: []) { $0.append($1) }
                }
                #expect(answers.count == 2)
                #expect(
                    Set(answers.map(\.droplet.id)).count == 1 && Set(answers.map(\.event.id)).count == 1,
                    "round \(round)")
                #expect(answers.filter { $0.entry != nil }.count == 1, "one of them wrote")
            }
            #expect(try await replicas[0].outboxCount() == 10)
        }
    }

    @Test(
        "two replicas told different endings of one event at once: one wins, the droplet follows it, the other is refused"
    )
    func concurrentUpdatesTakeTurns() async throws {
        try await withReplicas(2) { replicas in
            var endings: [Harpoon_V1_Event.Status: Int] = [:]
            for round in 0..<20 {
                let (_, event) = try await replicas[0].createDroplet(createRequest("web-\(round)"))
                _ = try await replicas[0].updateEvent(
                    id: event.id, status: .placed, hypervisorId: "hv1", error: nil, ipv4Address: nil, then: nil)
                // Each replica reads the event as placed and would move it on: without row locks both would write.
                async let completed = Result(catching: {
                    try await replicas[0].updateEvent(
                        id: event.id, status: .completed, hypervisorId: nil, error: nil, ipv4Address: "10.0.0.1",
                        then: nil)
                })
                async let errored = Result(catching: {
                    try await replicas[1].updateEvent(
                        id: event.id, status: .errored, hypervisorId: nil, error: "disk full", ipv4Address: nil,
                        then: nil)
                })
                let answers = await [completed, errored]
                let succeeded = answers.compactMap { try? $0.get() }
                #expect(succeeded.count == 1, "round \(round): exactly one ending is accepted")
                let refused = answers.compactMap { result -> HarpoonError? in
                    if case .failure(let error) = result { return error as? HarpoonError }
                    return nil
                }
                #expect(
                    refused.count == 1 && refused.first?.isOutrun == true,
                    "round \(round): the other is refused as outrun")
                let final = try #require(try await replicas[1].event(id: event.id))
                let droplet = try #require(try await replicas[0].droplet(id: event.dropletId))
                #expect(succeeded.first?.status == final.status)
                switch final.status {
                case .completed: #expect(droplet.status == .active && droplet.ipv4Address == "10.0.0.1")
                case .errored:
                    #expect(droplet.status == .errored && droplet.error == "disk full" && droplet.ipv4Address == "")
                default: Issue.record("event \(event.id) ended \(final.status)")
                }
                endings[final.status, default: 0] += 1
            }
            #expect(endings.values.reduce(0, +) == 20)
        }
    }

    @Test("a commit on one replica wakes the other's listeners, without polling", .timeLimit(.minutes(1)))
    func notifications() async throws {
        try await withReplicas(2) { replicas in
            // Each wake-up of replica 1's listener, as it comes: the test waits on them, not on a clock.
            let (wakes, wake) = AsyncStream.makeStream(of: Void.self)
            let listening = Task { await replicas[1].listen(changed: { wake.yield() }) }
            var next = wakes.makeAsyncIterator()
            // The listener wakes once when it starts (anything committed before it listened).
            #expect(await next.next() != nil)
            _ = try await replicas[0].createDroplet(createRequest("web-1"))
            #expect(await next.next() != nil, "replica 0's commit reached replica 1")
            listening.cancel()
            await listening.value
            wake.finish()
        }
    }

    @Test(
        "a replica that stops gives back the entries it held: the others are woken and take them at once, not after the lease",
        .timeLimit(.minutes(1)))
    func releaseOnStop() async throws {
        try await withReplicas(2) { replicas in
            let (releases, release) = AsyncStream.makeStream(of: Void.self)
            let (changes, change) = AsyncStream.makeStream(of: Void.self)
            let listening = Task {
                await replicas[1].listen(changed: { change.yield() }, released: { release.yield() })
            }
            var released = releases.makeAsyncIterator()
            var changed = changes.makeAsyncIterator()
            // Both wake once when listening starts.
            #expect(await released.next() != nil)
            #expect(await changed.next() != nil)
            // Replica 0 creates two droplets: their entries are its own for the lease (30 s), not due to replica 1.
            let held = try await replicas[0].createDropletQueued(createRequest("held"))
            let settled = try await replicas[0].createDropletQueued(createRequest("settled"))
            let now = Date().timeIntervalSince1970
            #expect(try await replicas[1].dueOutbox(now: now, limit: 10).isEmpty)
            let entries = [try #require(held.entry), try #require(settled.entry)]
            try await replicas[0].acknowledge(entries[1])
            // It stops and gives back what it held (one of them settled meanwhile): replica 1 is woken and finds the
            // other due now.
            try await replicas[0].releaseOutbox(entries.map(\.id))
            #expect(await released.next() != nil, "replica 1 was told")
            #expect(
                try await replicas[1].dueOutbox(now: Date().timeIntervalSince1970, limit: 10).map(\.id) == [
                    entries[0].id
                ])
            listening.cancel()
            await listening.value
            release.finish()
            change.finish()
        }
    }
}

extension Result where Failure == any Error {
    init(catching body: () async throws -> Success) async {
        do { self = .success(try await body()) } catch { self = .failure(error) }
    }
}
