import Testing

@testable import Aggregator

@Suite("aggregator parts")
struct AggregatorPartsTests {
    @Test("request ids are version 4 UUIDs, lowercase, and do not repeat")
    func requestIDs() {
        var seen = Set<String>()
        for _ in 0..<20_000 {
            let id = RequestID.next()
            let groups = id.split(separator: "-", omittingEmptySubsequences: false).map(\.count)
            #expect(groups == [8, 4, 4, 4, 12], "\(id)")
            #expect(id.allSatisfy { $0 == "-" || $0.isHexDigit && !$0.isUppercase })
            let characters = Array(id)
            #expect(characters[14] == "4", "version: \(id)")
            #expect("89ab".contains(characters[19]), "variant: \(id)")
            seen.insert(id)
        }
        #expect(seen.count == 20_000)
    }

    @Test("the droplet an IP was last seen on is remembered per customer, forgotten when unassigned, and bounded")
    func dropletGuesses() {
        let guesses = DropletGuesses(capacity: 3)
        #expect(guesses.guess(ip: "192.0.2.1", customer: "alice") == nil)
        guesses.record(ip: "192.0.2.1", customer: "alice", dropletId: 7)
        #expect(guesses.guess(ip: "192.0.2.1", customer: "alice") == 7)
        #expect(guesses.guess(ip: "192.0.2.1", customer: "bob") == nil)
        guesses.record(ip: "192.0.2.1", customer: "alice", dropletId: 8)
        #expect(guesses.guess(ip: "192.0.2.1", customer: "alice") == 8)
        guesses.record(ip: "192.0.2.1", customer: "alice", dropletId: 0)
        #expect(guesses.guess(ip: "192.0.2.1", customer: "alice") == nil)
        for index in 1...3 { guesses.record(ip: "192.0.2.\(index)", customer: "alice", dropletId: Int64(index)) }
        #expect(guesses.guess(ip: "192.0.2.3", customer: "alice") == 3)
        guesses.record(ip: "192.0.2.9", customer: "alice", dropletId: 9)  // over capacity: starts again
        #expect(guesses.guess(ip: "192.0.2.9", customer: "alice") == 9)
        #expect(guesses.guess(ip: "192.0.2.1", customer: "alice") == nil)
    }
}
