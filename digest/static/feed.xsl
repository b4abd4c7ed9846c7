<?xml version="1.0" encoding="utf-8"?>
<!-- A feed opened in a browser: what it is, how to subscribe, its items. RSS 2.0 and Atom. -->
<xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform"
    xmlns:atom="http://www.w3.org/2005/Atom" exclude-result-prefixes="atom">
  <xsl:output method="html" encoding="utf-8" doctype-system="about:legacy-compat"/>
  <xsl:template match="/">
    <xsl:variable name="title" select="(rss/channel/title | atom:feed/atom:title)[1]"/>
    <xsl:variable name="self" select="(rss/channel/atom:link[@rel='self']/@href | atom:feed/atom:link[@rel='self']/@href)[1]"/>
    <html lang="en">
      <head>
        <meta charset="utf-8"/>
        <meta name="viewport" content="width=device-width, initial-scale=1"/>
        <title><xsl:value-of select="$title"/> (feed)</title>
        <link rel="stylesheet" href="/static/web.css"/>
      </head>
      <body>
        <main class="wrap">
          <h1><xsl:value-of select="$title"/></h1>
          <div class="card">
            <p><strong>This is a feed.</strong> Copy its address into a feed reader (NetNewsWire,
              Feedly, Thunderbird, Inoreader…) to get new papers as they arrive:</p>
            <p><code class="feed-url"><xsl:value-of select="$self"/></code></p>
          </div>
          <xsl:for-each select="rss/channel/item | atom:feed/atom:entry">
            <article class="card paper">
              <h3><a href="{(link | atom:link/@href)[1]}"><xsl:value-of select="title | atom:title"/></a></h3>
              <p class="small muted"><xsl:value-of select="pubDate | atom:published"/>
                <xsl:for-each select="category | atom:category"> · <xsl:value-of select=". | @term"/></xsl:for-each></p>
            </article>
          </xsl:for-each>
        </main>
      </body>
    </html>
  </xsl:template>
</xsl:stylesheet>
