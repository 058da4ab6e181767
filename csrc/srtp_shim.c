/* libsrtp function table (see srtp_shim.h). */
#include <stddef.h>

#include "mf_common.h"
#include "srtp_shim.h"

mf_srtp_api mf_srtp;

int mf_srtp_bind(const mf_srtp_api *api)
{
    if (!api->create || !api->dealloc || !api->protect || !api->protect_rtcp || !api->unprotect ||
        !api->unprotect_rtcp)
        return -1;
    mf_srtp = *api;
    return 0;
}

int mf_srtp_ready(void)
{
    return mf_srtp.protect != NULL;
}

void *mf_srtp_session_new(const void *policy, int *err)
{
    void *session = NULL;
    if (!mf_srtp_ready()) {
        *err = -1;
        return NULL;
    }
    *err = mf_srtp.create(&session, policy);
    if (*err != 0)
        return NULL;
    mf_note_external_alloc(1);
    return session;
}

void mf_srtp_session_free(void *session)
{
    if (!session)
        return;
    mf_srtp.dealloc(session);
    mf_note_external_alloc(-1);
}
