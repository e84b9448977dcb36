// A NameNode and a DataNode in one JVM (Hadoop's MiniDFSCluster) for `millrace stack up --with hdfs`.
//
// Run by millrace with Java's single-file source launch: java -cp '<hdfs lib>/*' MiniHdfs.java
//   --base-dir DIR --rpc-port N --http-port N
// The cluster keeps its data under DIR: the file system is formatted only when DIR holds no marker of an
// earlier format, so files survive restarts. Prints one "MiniHdfs ready ..." line once the DataNode is up,
// and shuts the cluster down on SIGTERM or SIGINT so the next start finds a consistent image.

import java.io.File;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.util.concurrent.CountDownLatch;

import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.hdfs.MiniDFSCluster;
import sun.misc.Signal;

public class MiniHdfs {
    static final String FORMATTED = "millrace-formatted";

    public static void main(String[] args) throws Exception {
        File baseDir = null;
        int rpcPort = -1;
        int httpPort = -1;
        for (int i = 0; i + 1 < args.length; i += 2) {
            switch (args[i]) {
                case "--base-dir" -> baseDir = new File(args[i + 1]);
                case "--rpc-port" -> rpcPort = Integer.parseInt(args[i + 1]);
                case "--http-port" -> httpPort = Integer.parseInt(args[i + 1]);
                default -> usage("unknown option " + args[i]);
            }
        }
        if (baseDir == null || rpcPort <= 0 || httpPort <= 0 || args.length % 2 != 0) {
            usage("--base-dir, --rpc-port and --http-port are required");
        }
        File marker = new File(baseDir, FORMATTED);
        boolean format = !marker.isFile();

        Configuration conf = new Configuration();
        conf.setBoolean("dfs.webhdfs.enabled", true);
        conf.setBoolean("dfs.permissions.enabled", false);
        // The address the NameNode hands to clients for reading and writing blocks.
        conf.set("dfs.datanode.hostname", "127.0.0.1");
        conf.setBoolean("dfs.client.use.datanode.hostname", true);
        // One DataNode: a replication of 1, else every block is reported under-replicated.
        conf.setInt("dfs.replication", 1);

        MiniDFSCluster cluster = new MiniDFSCluster.Builder(conf, baseDir)
                .nameNodePort(rpcPort)
                .nameNodeHttpPort(httpPort)
                .numDataNodes(1)
                .format(format)
                .manageNameDfsDirs(true)
                .manageDataDfsDirs(true)
                .checkDataNodeHostConfig(true)
                .waitSafeMode(true)
                .build();
        cluster.waitActive();
        if (format) {
            Files.writeString(marker.toPath(), "formatted by millrace\n", StandardCharsets.UTF_8);
        }

        // SIGTERM/SIGINT release the main thread, which stops the cluster before the JVM's own shutdown
        // begins: a shutdown hook would race Hadoop's hooks (they refuse to be removed during shutdown).
        CountDownLatch stop = new CountDownLatch(1);
        Signal.handle(new Signal("TERM"), signal -> stop.countDown());
        Signal.handle(new Signal("INT"), signal -> stop.countDown());
        System.out.println("MiniHdfs ready rpc=hdfs://127.0.0.1:" + cluster.getNameNodePort()
                + " http=http://127.0.0.1:" + httpPort + " formatted=" + format + " base=" + baseDir);
        System.out.flush();
        stop.await();
        System.out.println("MiniHdfs stopping");
        System.out.flush();
        // Not cluster.shutdown(): it schedules the whole base dir for deletion at JVM exit (a test cluster's
        // habit), and the data must survive a restart.
        cluster.shutdownDataNodes();
        cluster.shutdownNameNodes();
        System.out.println("MiniHdfs stopped");
        System.out.flush();
        System.exit(0);
    }

    static void usage(String why) {
        System.err.println("MiniHdfs: " + why
                + "\nusage: java -cp '<hadoop-minicluster jars>/*' MiniHdfs.java"
                + " --base-dir DIR --rpc-port N --http-port N");
        System.exit(2);
    }
}
