import EventRouter
import EventRouterAPI
import Foundation
import HarpoonAPI
import HypervisorAgent
import NIOCore
import Scheduler
import Synchronization
import TestSupport
import Testing

@testable import Harpoon

/// A result sink whose target is set once Harpoon's port is known (routers start before Harpoon).
final class LateResultSink: ResultSink {
    let inner = Mutex<(any ResultSink)?>(nil)

    func report(_ progress: Eventrouter_V1_EventProgress, hypervisorId: String) async throws {
        guard let sink = inner.withLock({ $0 }) else {
            throw RPCError(code: .unavailable, message: "harpoon not up yet")
        }
        try await sink.report(progress, hypervisorId: hypervisorId)
    }
}

/// Scheduler, two routers, Harpoon and a fleet of agents, each on its own port on 127.0.0.1, in one process.
final class Cluster {
    let directory: URL
    var servers: [RPCServer] = []
    var clients: [RPCClient] = []
    var tasks: [Task<Void, Never>] = []
    var agents: [HypervisorAgent] = []
    var harpoon: Harpoon_V1_Harpoon.Client!
    var store: SQLiteHarpoonStore!
    let fleet = Fleet()

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("cluster-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    func client(_ port: Int) -> RPCClient {
        let client = RPCClient(targets: [("127.0.0.1", port)])
        clients.append(client)
        return client
    }

    func start(_ services: [any RPCService]) async throws -> Int {
        let server = RPCServer(configuration: .init(host: "127.0.0.1", port: 0), services: services)
        servers.append(server)
        guard let port = try await server.start().port else { throw RPCError(code: .internal, message: "no port") }
        return port
    }

    func start(
        regions: [String], agentsPerRegion: Int, agent configure: (inout AgentConfiguration) -> Void
    ) async throws {
        let schedulerPort = try await start([SchedulerService(fleet: fleet)])
        let results = LateResultSink()
        var routerPorts: [String: Int] = [:]
        for region in regions {
            let router = Router(
                region: region, results: results, fleet: SchedulerFleetSink(client: client(schedulerPort)))
            routerPorts[region] = try await start([EventRouterService(router: router)])
            tasks.append(Task { await router.run(flushInterval: .milliseconds(50)) })
        }
        store = try SQLiteHarpoonStore(path: directory.appendingPathComponent("events.sqlite").path)
        let changes = ChangeNotifier()
        let placer = SchedulerPlacer(client: client(schedulerPort))
        let worker = OutboxWorker(
            store: store, placer: placer, delivery: RouterDelivery(routers: routerPorts.mapValues { client($0) }),
            onChange: { changes.changed() }
        )
        tasks.append(Task { await worker.run() })
        let harpoonPort = try await start([
            HarpoonService(store: store, worker: worker, changes: changes, placer: placer)
        ])
        results.inner.withLock { $0 = HarpoonResultSink(client: client(harpoonPort)) }
        harpoon = Harpoon_V1_Harpoon.Client(client(harpoonPort))
        for region in regions {
            for index in 0..<agentsPerRegion {
                var configuration = AgentConfiguration(hypervisorId: "\(region)-hv\(index)", region: region)
                configuration.subnet = UInt8(index)
                configure(&configuration)
                let agent = HypervisorAgent(configuration)
                agents.append(agent)
                let routerClient = client(routerPorts[region] ?? 0)
                tasks.append(Task { await agent.run(client: routerClient) })
            }
        }
    }

    func stop() async {
        for task in tasks { task.cancel() }
        for client in clients { await client.close() }
        for server in servers { await server.shutdownGracefully(timeout: .seconds(2)) }
        try? FileManager.default.removeItem(at: directory)
    }
}

let sizeSmall = Scheduler_V2_Size(slug: "s-1vcpu-1gb", vcpus: 1, memoryMb: 1024, diskGb: 25)

@Suite("the event pipeline, in one process over 127.0.0.1")
struct PipelineTests {
    @Test(
        "droplets requested concurrently all become active on hypervisors that can hold them; one that fits nowhere is errored with the reason"
    )
    func createDroplets() async throws {
        let cluster = try Cluster()
        do {
            // 2 regions x 5 agents, each room for 7 small droplets (8 GiB less the 1 GiB floor): 70 in all.
            try await cluster.start(regions: ["nyc1", "sfo3"], agentsPerRegion: 5) { agent in
                agent.cpus = 4
                agent.memoryMB = 8192
                agent.diskGB = 500
                agent.eventDuration = .milliseconds(5)
                agent.heartbeatInterval = .milliseconds(50)
            }
            let harpoon = try #require(cluster.harpoon)
            let requested = 60
            let created = try await withThrowingTaskGroup(of: Harpoon_V1_CreateDropletResponse.self) { group in
                for index in 0..<requested {
                    group.addTask {
                        try await harpoon.createDroplet(
                            .init(
                                idempotencyKey: "create-\(index)", customer: index % 3 == 0 ? "bob" : "alice",
                                name: "web-\(index)",
                                region: index % 2 == 0 ? "nyc1" : "sfo3", size: sizeSmall, image: "ubuntu"
                            ))
                    }
                }
                return try await group.reduce(into: []) { $0.append($1) }
            }
            let huge = try await harpoon.createDroplet(
                .init(
                    customer: "alice", name: "huge", region: "nyc1",
                    size: Scheduler_V2_Size(slug: "s-32vcpu-192gb", vcpus: 32, memoryMb: 196_608, diskGb: 3840),
                    image: "ubuntu"
                ))
            let ids = created.compactMap { $0.droplet?.id }
            #expect(ids.count == requested)
            let store = try #require(cluster.store)
            let allActive = await eventually(timeout: .seconds(60)) {
                for id in ids where (try? await store.droplet(id: id))?.status != .active { return false }
                return true
            }
            #expect(allActive)
            // Nothing oversubscribed: no agent holds more than fits, and the agents hold exactly the droplets.
            for agent in cluster.agents {
                #expect(agent.dropletCount <= 7, "\(agent.configuration.hypervisorId) holds \(agent.dropletCount)")
            }
            #expect(cluster.agents.reduce(0) { $0 + $1.dropletCount } == requested)
            let hugeId = try #require(huge.droplet?.id)
            #expect(
                await eventually(timeout: .seconds(30)) { (try? await store.droplet(id: hugeId))?.status == .errored })
            let reason = try await store.droplet(id: hugeId)?.error ?? ""
            #expect(reason.contains("has room for s-32vcpu-192gb"), "\(reason)")
            // Every droplet has an address from its hypervisor.
            let sample = try #require(try await store.droplet(id: ids[0]))
            #expect(sample.ipv4Address.hasPrefix("10.") && !sample.hypervisorId.isEmpty)
        } catch {
            Issue.record("\(error)")
        }
        await cluster.stop()
    }
}
