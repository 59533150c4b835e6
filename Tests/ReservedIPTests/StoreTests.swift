import Foundation
@testable import ReservedIP
import ReservedIPAPI
import Testing

@Suite("the reserved-IP store")
struct StoreTests {
    @Test("debug")
    func debug() async throws {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("rip-\(UUID().uuidString).sqlite").path
        let store = try ReservedIPStore(path: path, pools: AddressPools(parsing: ["nyc1=192.0.2.0/24"]))
        let ip = try await store.reserve(customer: "alice", region: "nyc1", projectId: "p", key: "k1")
        do {
            let (state, _) = try await store.beginAssign(customer: "alice", ip: ip.ip, dropletId: 7, key: "k2")
            print(state)
        } catch { print("ERROR", String(reflecting: error)) }
    }
}
