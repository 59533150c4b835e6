import ShoalRPC
import Synchronization
import Testing

@Suite("call batching")
struct CallBatcherTests {
    struct Odd: Error {}

    @Test("items submitted together share calls, never more than the limits, and each gets its own result")
    func batchesFormUnderLoad() async throws {
        let calls = Mutex<[[Int]]>([])
        let out = Mutex((now: 0, most: 0))
        let batcher = CallBatcher<Int, Int>(maxBatch: 16, maxInFlight: 2) { batch in
            out.withLock {
                $0.now += 1
                $0.most = max($0.most, $0.now)
            }
            calls.withLock { $0.append(batch) }
            try? await Task.sleep(for: .milliseconds(5))  // a call takes a while: items pile up meanwhile
            out.withLock { $0.now -= 1 }
            return batch.map { $0 % 2 == 0 ? .success($0 * 10) : .failure(Odd()) }
        }
        let results = await withTaskGroup(of: (Int, Int?).self) { group in
            for item in 0..<200 {
                group.addTask { (item, try? await batcher.submit(item)) }
            }
            return await group.reduce(into: [Int: Int?]()) { $0[$1.0] = $1.1 }
        }
        #expect(results.count == 200)
        for (item, result) in results { #expect(result == (item % 2 == 0 ? item * 10 : nil), "item \(item)") }
        let batches = calls.withLock { $0 }
        #expect(batches.flatMap { $0 }.sorted() == Array(0..<200), "every item sent exactly once")
        #expect(batches.allSatisfy { $0.count <= 16 })
        #expect(batches.count < 200, "items shared calls")
        #expect(out.withLock { $0.most } <= 2)
        #expect(batcher.waiting == 0)
    }

    @Test("an item sent alone goes at once; a short answer fails the items it left out")
    func aloneAndShortAnswers() async throws {
        let batcher = CallBatcher<Int, Int>(maxBatch: 8, maxInFlight: 1) { batch in
            Array(batch.dropLast().map { .success($0) })  // one result short
        }
        // Alone: a batch of one, whose only result is missing.
        await #expect(throws: RPCError.self) { try await batcher.submit(1) }
        let both = CallBatcher<Int, Int>(maxBatch: 8, maxInFlight: 1) { batch in batch.map { .success($0 + 1) } }
        #expect(try await both.submit(41) == 42)
    }

    @Test("for an RPC with per-item statuses: codes become errors, a failed call fails its whole batch")
    func perItemStatuses() async throws {
        struct Outcome: Sendable {
            var code: UInt32
            var message: String
            var value: Int
        }
        let down = Mutex(false)
        let batcher = CallBatcher<Int, Int>(
            call: { batch in
                if down.withLock({ $0 }) { throw RPCError(code: .unavailable, message: "no route") }
                return batch.map {
                    $0 < 0
                        ? Outcome(code: 5, message: "no item \($0)", value: 0)
                        : Outcome(code: 0, message: "", value: $0 * 2)
                }
            },
            status: { ($0.code, $0.message) },
            value: { $0.value }
        )
        #expect(try await batcher.submit(21) == 42)
        await #expect(throws: RPCError(code: .notFound, message: "no item -1")) { try await batcher.submit(-1) }
        down.withLock { $0 = true }
        await #expect(throws: RPCError(code: .unavailable, message: "no route")) { try await batcher.submit(3) }
    }

    @Test("a per-item status turns back into the error it stood for")
    func statusRoundTrip() {
        let (code, message) = RPCError.batchedStatus(of: RPCError(code: .failedPrecondition, message: "already done"))
        #expect(code == 9 && message == "already done")
        #expect(
            RPCError(batchedCode: code, message: message)
                == RPCError(code: .failedPrecondition, message: "already done"))
        #expect(RPCError(batchedCode: 0, message: "") == nil)
        #expect(RPCError.batchedStatus(of: CallBatcherTests.Odd()).code == 2)
    }
}
