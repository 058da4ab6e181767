/* What both I/O backends do when a socket reports an error: read its error queue.
 *
 * ICMP errors (port or host unreachable) for a connected UDP socket with IP_RECVERR set
 * arrive on the socket's error queue, whichever backend told us the socket is readable.
 */
#include <errno.h>
#include <time.h> /* before linux/errqueue.h, which uses struct timespec */
#include <linux/errqueue.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#include "io.h"

int mf_io_next_socket_error(int fd)
{
    uint8_t control[512];
    uint8_t data[64];
    struct iovec iov = {data, sizeof(data)};
    struct sockaddr_storage from;
    struct msghdr h = {.msg_name = &from, .msg_namelen = sizeof(from), .msg_iov = &iov,
                       .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control)};
    if (recvmsg(fd, &h, MSG_ERRQUEUE | MSG_DONTWAIT) < 0)
        return -1;
    int err = ECONNREFUSED; /* an error-queue entry without IP_RECVERR data: unreachable */
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&h); cm; cm = CMSG_NXTHDR(&h, cm)) {
        if ((cm->cmsg_level == IPPROTO_IP && cm->cmsg_type == IP_RECVERR) ||
            (cm->cmsg_level == IPPROTO_IPV6 && cm->cmsg_type == IPV6_RECVERR)) {
            struct sock_extended_err ee;
            memcpy(&ee, CMSG_DATA(cm), sizeof(ee));
            err = (int)ee.ee_errno;
        }
    }
    return err;
}
