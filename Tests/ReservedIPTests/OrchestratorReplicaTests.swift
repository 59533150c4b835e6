import Foundation
import HarpoonAPI
import ReservedIPAPI
import TestSupport
import Testing

@testable import ReservedIP

/// Several orchestrator replicas on one PostgreSQL database, each with its own server and transition driver.
@Suite("reserved-IP orchestrator replicas on one PostgreSQL database", .serialized, .postgresServer)
struct OrchestratorReplicaTests {
    @Test(
        "an action is driven by one replica at a time: a claim is refused to others until it lapses, and then its old holder loses it"
    )
    func claims() async throws {
        let bench = try await Bench(.postgres)
        let a = try await Orchestrator(bench)
        let b = try await Orchestrator(bench)
        do {
            let droplet = try await bench.droplet()
            let ip = try #require(try await a.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp).ip
            // An action begun in the store alone: no driver of the test's replicas touches it (their sweeps are 30 s apart).
            let (state, _) = try await a.store.beginAssign(customer: "alice", ip: ip, dropletId: droplet, key: "")
            let id = state.action.id
            #expect(try await a.store.claimAction(id, driver: "x", seconds: 30))
            // x holds it: y, through the other replica, may not drive it; x renews it.
            #expect(try await b.store.claimAction(id, driver: "y", seconds: 30) == false)
            #expect(try await a.store.claimAction(id, driver: "x", seconds: 30), "its holder renews it")
            // A claim that lapsed (its holder went quiet) is anyone's; the old holder's renewal is then refused.
            #expect(try await a.store.claimAction(id, driver: "x", seconds: -1), "x lets it lapse")
            #expect(try await b.store.claimAction(id, driver: "y", seconds: 30))
            #expect(try await a.store.claimAction(id, driver: "x", seconds: 30) == false)
            try await b.store.releaseAction(id, driver: "y")
            #expect(try await a.store.claimAction(id, driver: "x", seconds: 30), "released: free again")
        } catch {
            Issue.record(error)
        }
        await a.stop()
        await b.stop()
        await bench.stop()
    }

    @Test(
        "requests racing on two replicas pass the checks one at a time: two IPs assigned to one droplet at once, one is refused"
    )
    func transitionsTakeTurns() async throws {
        let bench = try await Bench(.postgres, pools: ["nyc1=192.0.2.0/28"])
        let a = try await Orchestrator(bench)
        let b = try await Orchestrator(bench)
        do {
            for round in 0..<5 {
                let droplet = try await bench.droplet()
                let first = try #require(try await a.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp)
                    .ip
                let second = try #require(try await b.api.reserve(.init(customer: "alice", region: "nyc1")).reservedIp)
                    .ip
                #expect(first != second, "one address each: allocation takes turns too")
                async let viaA = refusal {
                    try await a.api.assign(.init(customer: "alice", ip: first, dropletId: droplet))
                }
                async let viaB = refusal {
                    try await b.api.assign(.init(customer: "alice", ip: second, dropletId: droplet))
                }
                let refusals = await [viaA, viaB]
                #expect(refusals.filter { $0 == nil }.count == 1, "round \(round): exactly one assign is accepted")
                #expect(
                    refusals.compactMap { $0 }.allSatisfy { $0.code == .failedPrecondition },
                    "round \(round): \(refusals)")
                try await bench.finishNext()
            }
        } catch {
            Issue.record(error)
        }
        await a.stop()
        await b.stop()
        await bench.stop()
    }

    @Test(
        "a replica that stops gracefully mid-action gives its claims up: the other, told, takes the action over at once, not after the lease"
    )
    func gracefulHandover() async throws {
        let bench = try await Bench(.postgres)
        // Claims of 30 s, and sweeps as far apart: within this test only the release can hand the action over.
        let a = try await Orchestrator(bench, claimSeconds: 30)
        let b = try await Orchestrator(bench, claimSeconds: 30)
        do {
            let droplet = try await bench.droplet()
            let reserved = try await a.api.reserve(.init(customer: "alice", dropletId: droplet))
            let action = try #require(reserved.action)
            #expect(try await bench.pendingIPEvents().count == 1)
            // SIGTERM on a: its driver stops and gives its claims up.
            try await a.driver.stop()
            await a.stop()
            try await bench.finishNext()
            let started = ContinuousClock.now
            #expect(try await b.finished(action.id).status == .completed)
            #expect(ContinuousClock.now - started < .seconds(20), "taken over before any claim could lapse")
            let events = try await bench.harpoon.listEvents(.init(types: ["assign_ip", "unassign_ip"]))
            #expect(events.total == 1, "the step ran once")
        } catch {
            Issue.record(error)
        }
        await b.stop()
        await bench.stop()
    }

    @Test(
        "a replica that stops mid-action: the other takes the action over when the claim lapses and ends it, its step's event created once"
    )
    func takeover() async throws {
        let bench = try await Bench(.postgres)
        let a = try await Orchestrator(bench, claimSeconds: 0.5)
        let b = try await Orchestrator(bench, claimSeconds: 0.5)
        do {
            let droplet = try await bench.droplet()
            let (ip, action) = try await {
                let reserved = try await a.api.reserve(.init(customer: "alice", dropletId: droplet))
                return (try #require(reserved.reservedIp).ip, try #require(reserved.action))
            }()
            // a created the first step's event before it answered, then dies: its driver stops, its claim stays.
            #expect(try await bench.pendingIPEvents().count == 1)
            await a.stop()
            try await bench.finishNext()
            // b adopts the action once a's claim lapses, sees its event finished, and completes it.
            #expect(try await b.finished(action.id).status == .completed)
            #expect(try await b.ip(ip).dropletId == droplet)
            let events = try await bench.harpoon.listEvents(.init(types: ["assign_ip", "unassign_ip"]))
            #expect(events.total == 1, "the step ran once")
            let billed = try await b.store.billing(customer: "alice").filter { $0.kind == "assign" }
            #expect(billed.count == 1)
        } catch {
            Issue.record(error)
        }
        await b.stop()
        await bench.stop()
    }
}
