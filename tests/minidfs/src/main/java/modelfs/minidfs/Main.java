package modelfs.minidfs;

import java.io.BufferedReader;
import java.io.File;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.Deque;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;

/**
 * A real HDFS (MiniDFSCluster: one namenode, several datanodes in this JVM) for the
 * modelfs tests, driven over stdin so a pytest fixture can inject failures.
 *
 * <pre>
 * java -cp ... modelfs.minidfs.Main [--port N] [--datanodes N] [--replication N] DATA_DIR
 * </pre>
 *
 * Prints "Ready! hdfs://127.0.0.1:PORT" once the cluster is up. Then reads one command
 * per line and answers each with "OK command" or "ERR command: reason":
 * stop-datanode N, start-datanode (restarts the last stopped one), stop-namenode,
 * start-namenode / restart-namenode (same port), shutdown. Exits on stdin EOF too, so
 * a test run that dies never leaves a cluster behind.
 */
public final class Main {
    private final MiniDFSCluster cluster;
    private final Deque<MiniDFSCluster.DataNodeProperties> stopped = new ArrayDeque<>();
    private boolean namenodeUp = true;

    private Main(MiniDFSCluster cluster) {
        this.cluster = cluster;
    }

    public static void main(String[] args) throws Exception {
        int port = 0;
        int datanodes = 3;
        int replication = 2;
        String dataDir = null;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--port": port = Integer.parseInt(args[++i]); break;
                case "--datanodes": datanodes = Integer.parseInt(args[++i]); break;
                case "--replication": replication = Integer.parseInt(args[++i]); break;
                default: dataDir = args[i];
            }
        }
        if (dataDir == null) {
            System.err.println("usage: Main [--port N] [--datanodes N] [--replication N] DATA_DIR");
            System.exit(2);
        }

        Configuration conf = new Configuration();
        conf.set("hdfs.minidfs.basedir", dataDir);
        conf.setInt("dfs.replication", replication);
        conf.setInt("dfs.namenode.safemode.extension", 0);
        conf.set("dfs.namenode.http-address", "127.0.0.1:0");
        // A stopped datanode is noticed in seconds, not in ten minutes.
        conf.setLong("dfs.heartbeat.interval", 1);
        conf.setInt("dfs.namenode.heartbeat.recheck-interval", 2000);
        // Let any user (HADOOP_USER_NAME of the tests) write anywhere.
        conf.setBoolean("dfs.permissions.enabled", false);
        // Small blocks: a few-MiB pack file spans several blocks, as a real one would.
        conf.setLong("dfs.namenode.fs-limits.min-block-size", 1024 * 1024);
        conf.setLong("dfs.blocksize", 8L * 1024 * 1024);

        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf, new File(dataDir))
                .numDataNodes(datanodes)
                .nameNodePort(port)
                .format(true)
                .build();
        cluster.waitActive();
        Main main = new Main(cluster);
        main.waitOutOfSafeMode();
        System.out.println("Ready! " + main.url());
        System.out.flush();
        main.serve();
    }

    private String url() {
        return "hdfs://127.0.0.1:" + cluster.getNameNodePort();
    }

    private void waitOutOfSafeMode() throws InterruptedException {
        long deadline = System.currentTimeMillis() + 60_000;
        while (cluster.getNamesystem().isInSafeMode() && System.currentTimeMillis() < deadline) {
            Thread.sleep(100);
        }
    }

    private void serve() throws Exception {
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
        String line;
        while ((line = in.readLine()) != null) {
            line = line.trim();
            if (line.isEmpty()) {
                continue;
            }
            if (line.equals("shutdown")) {
                break;
            }
            try {
                run(line.split("\\s+"));
                System.out.println("OK " + line);
            } catch (Exception e) {
                System.out.println("ERR " + line + ": " + e);
                e.printStackTrace();
            }
            System.out.flush();
        }
        try {
            cluster.shutdown(true);
        } finally {
            System.out.println("Bye");
            System.out.flush();
            // Hadoop leaves non-daemon threads behind; do not wait for them.
            System.exit(0);
        }
    }

    private void run(String[] cmd) throws Exception {
        switch (cmd[0]) {
            case "stop-datanode": {
                int index = cmd.length > 1 ? Integer.parseInt(cmd[1]) : 0;
                MiniDFSCluster.DataNodeProperties props = cluster.stopDataNode(index);
                if (props == null) {
                    throw new IllegalArgumentException("no datanode " + index);
                }
                stopped.push(props);
                break;
            }
            case "start-datanode": {
                if (stopped.isEmpty()) {
                    throw new IllegalStateException("no stopped datanode");
                }
                cluster.restartDataNode(stopped.pop(), true);
                if (namenodeUp) {
                    cluster.waitActive();
                }
                break;
            }
            case "stop-namenode":
                cluster.shutdownNameNode(0);
                namenodeUp = false;
                break;
            case "start-namenode":
            case "restart-namenode":
                cluster.restartNameNode(0, true);
                namenodeUp = true;
                waitOutOfSafeMode();
                break;
            case "datanodes":
                System.out.println("datanodes " + cluster.getDataNodes().size());
                break;
            default:
                throw new IllegalArgumentException("unknown command " + cmd[0]);
        }
    }
}
